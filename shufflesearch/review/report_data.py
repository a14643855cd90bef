"""What the HTML report shows, computed from a run's records: plain data, no drawing (figures.py
turns it into plots, html.py lays out the page). Every read of a trial record for the report
happens here; ``load_report_data`` is the I/O edge that opens the run folder."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..guidelines.checks import Finding, GuidelineSettings, check
from ..measure.predictor import LatencyTable, table_path
from ..measure.target import TargetSpec
from ..model.arch import Arch
from ..model.cost import graph_costs
from ..model.graph import op_graph
from ..search.records import TrialRecord, measured
from .pareto import (
    HypervolumeHistory,
    ParetoRow,
    RankCorrelation,
    failed,
    format_reference,
    hypervolume_history,
    load_records,
    load_reference_note,
    pareto_rows,
    rank_correlation,
    run_check_text,
)
from .transfer import load_transfer, transfer_html

# --- what to show (pure) ------------------------------------------------------------------------


@dataclass
class UnitRow:
    unit: str  # "stem", "stages.i.j", "head", "classifier"
    params: int
    macs: int
    mac: int  # memory access cost, elements
    predicted_ms: float | None  # from the latency table, when there is one


@dataclass
class Pick:
    label: str  # "knee", "fastest", "best proxy"
    trial: int
    archid: str
    latency_ms: float  # measured, as stored
    units: list[UnitRow]


@dataclass
class TrialDetail:
    """What hovering over or clicking a trial shows beyond its ParetoRow."""

    units: list[UnitRow]  # per-unit cost at the target resolution (empty: no architecture stored)
    worst: Finding | None  # the guideline finding with the largest penalty, None without findings
    n_findings: int


@dataclass
class RungStats:
    """One rung of the fidelity ladder over the trials that reached it."""

    rung: int
    reached: int
    stopped: int  # trials whose climb ended here
    steps: int | None  # training steps at this rung
    val_acc: list[float]  # where scored (the top rung)
    sotl_per_step: list[float]  # the estimator every rung records


@dataclass
class ReportData:
    title: str
    meta: dict[str, str]  # run facts shown at the top
    rows: list[ParetoRow]  # every completed trial (on_front/baseline/knee flags)
    macs_corr: RankCorrelation  # MACs vs measured latency
    mac_corr: RankCorrelation  # MAC vs measured latency
    hv: HypervolumeHistory
    picks: list[Pick]
    predictor_note: str  # where predicted per-unit latency came from, or why there is none
    n_failed: int
    failures: list[tuple[int, str]] = field(default_factory=list)
    details: dict[int, TrialDetail] = field(default_factory=dict)  # by trial, every row's
    run: str = ""  # the run folder as `shufflesearch export` takes it ("" outside a run)
    transfer: str = ""  # the runtimes section (transfer.py), when the run carries transfer.json
    # The fidelity ladder (empty in a zero-cost run): per trial that trained, (trial, baseline?,
    # [(rung, SoTL per step), ...]); how many trials reached each rung (index = rung); the
    # per-rung table; trials that never trained; the run's self-check in a few lines.
    ladder_curves: list[tuple[int, bool, list[tuple[int, float]]]] = field(default_factory=list)
    ladder_reached: list[int] = field(default_factory=list)
    ladder_rungs: list[RungStats] = field(default_factory=list)
    never_trained: int = 0
    check_text: str | None = None


UnitMs = Callable[[Arch], dict[str, float] | None]  # arch -> predicted ms per unit, or None


def _arch(rec: TrialRecord) -> Arch | None:
    """The record's architecture (None for a record without one)."""
    return rec.arch  # None: stored in a form this version cannot read


def trial_details(records: list[TrialRecord], resolution: int, unit_ms: UnitMs | None = None,
                  settings: GuidelineSettings | None = None) -> dict[int, TrialDetail]:
    """Per completed trial: its unit table and its worst guideline finding, re-derived from the
    stored architecture with the run's guideline settings (the record keeps only the
    penalties). One computation per distinct architecture."""
    by_arch: dict[str, TrialDetail] = {}
    out = {}
    for r in measured(records):
        arch = _arch(r)
        n = r.guidelines.n_findings
        if arch is None:
            out[r.trial] = TrialDetail([], None, n)
            continue
        if arch.archid not in by_arch:
            g = op_graph(arch, resolution)  # one graph for both: building it is most of the cost
            ms = (unit_ms(arch) if unit_ms else None) or {}
            units = [UnitRow(k, u.params, u.macs, u.mac, ms.get(k)) for k, u in graph_costs(g).units.items()]
            found = check(g, resolution, settings).findings
            worst = max(found, key=lambda f: f.penalty) if found else None
            by_arch[arch.archid] = TrialDetail(units, worst, len(found))
        out[r.trial] = by_arch[arch.archid]
    return out


def _picks(rows: list[ParetoRow], details: dict[int, TrialDetail]) -> list[Pick]:
    front = [r for r in rows if r.on_front]
    if not front:
        return []
    chosen: list[tuple[str, ParetoRow]] = []
    for label, r in (("knee", next((r for r in front if r.knee), None)),
                     ("fastest", min(front, key=lambda r: r.latency_ms)),
                     ("best proxy", max(front, key=lambda r: r.proxy if r.proxy is not None else -math.inf))):
        if r is None:
            continue
        if any(r.trial == c.trial for _, c in chosen):  # one table per trial, labels joined
            chosen = [((f"{lab}, {label}" if c.trial == r.trial else lab), c) for lab, c in chosen]
        else:
            chosen.append((label, r))
    return [Pick(label, r.trial, r.archid, r.latency_ms, details[r.trial].units)
            for label, r in chosen if r.trial in details]


def ladder_figure_data(records: list[TrialRecord]) -> tuple[list[tuple[int, bool, list[tuple[int, float]]]], list[int]]:
    """What the ladder figure draws: each trained trial's estimate at every rung it reached (in
    its own estimator, so one curve shows how its ranking figure grew), and the count of trials
    reaching each rung. Empty in a zero-cost run."""
    done = [r for r in measured(records) if r.top_rung is not None]
    if not done:
        return [], []
    top = max(r.top_rung or 0 for r in done)
    reached = [sum(1 for r in done if (r.rung or 0) >= k) for k in range(top + 1)]
    curves = []
    for r in done:  # SoTL per step: the one estimator every rung records
        pts = [(k, res.estimate("sotl")) for k in range(1, (r.rung or 0) + 1)
               if (res := r.rung_result(k)) is not None and res.has("sotl")]
        if pts:
            curves.append((r.trial, bool(r.baseline), pts))
    return curves, reached


def ladder_rung_stats(records: list[TrialRecord]) -> tuple[list[RungStats], int]:
    """Per rung: how many trials reached it and stopped there, its steps and the estimates
    there; and how many (infeasible) trials never trained. Empty in a zero-cost run."""
    recs = [r for r in measured(records) if r.rungs]
    never = sum(1 for r in measured(records) if r.top_rung is not None and not r.rungs)
    top = max((r.top_rung or 0) for r in recs) if recs else 0
    out = []
    for k in range(1, top + 1):
        at = [res for r in recs if (res := r.rung_result(k)) is not None]
        out.append(RungStats(
            rung=k, reached=len(at), stopped=sum(1 for r in recs if r.rung == k),
            steps=at[0].steps if at else None,
            val_acc=[a.estimate("val_acc") for a in at if a.has("val_acc")],
            sotl_per_step=[a.estimate("sotl") for a in at if a.has("sotl")]))
    return out, never


def report_data(records: list[TrialRecord], *, title: str, meta: dict[str, str],
                resolution: int, unit_ms: UnitMs | None = None, predictor_note: str = "",
                settings: GuidelineSettings | None = None, run: str = "",
                check_text: str | None = None) -> ReportData:
    """Everything the page shows, computed from the run's trial records."""
    rows = pareto_rows(records, all_trials=True)
    lat = [r.latency_ms for r in rows]
    bad = failed(records)
    curves, reached = ladder_figure_data(records)
    rungs, never = ladder_rung_stats(records)
    details = trial_details(records, resolution, unit_ms, settings)
    return ReportData(
        title=title, meta=meta, rows=rows,
        macs_corr=rank_correlation([r.macs for r in rows], lat),
        mac_corr=rank_correlation([r.mac for r in rows], lat),
        hv=hypervolume_history(records),
        picks=_picks(rows, details),
        predictor_note=predictor_note, n_failed=len(bad),
        failures=[(r.trial, r.fail_reason or "") for r in bad],
        details=details, run=run, check_text=check_text,
        ladder_curves=curves, ladder_reached=reached, ladder_rungs=rungs, never_trained=never,
    )


# --- the run folder (I/O edge) ----------------------------------------------------------------


def _unit_ms_from_table(spec: TargetSpec) -> tuple[UnitMs | None, str]:
    """Predicted per-unit ms from this machine's latency table for the run's target, if any."""
    path = table_path(spec)
    if not path.exists():
        return None, ("Cost only: no latency table for this target on this machine "
                      "(build one with `shufflesearch latency table build`). The latency above "
                      "each table is the measured whole-model median.")
    table = LatencyTable.load(path)
    how = ("its unit model fitted on whole-model timings" if table.joint
           else f"its unit entries scaled by the whole-model factor {table.scale:.2f}")
    return table.unit_breakdown, (f"Predicted per-unit latency from the table {path.name} ({how}); "
                                  "the heading shows the measured total.")


def load_report_data(run_path: str | Path, say: Callable[[str], None] | None = None) -> ReportData:
    """report_data of a run folder, with the run's facts, transfer section and self-check."""
    run, records = load_records(run_path)
    done = measured(records)
    if not done:
        raise UserError(f"{run.root}: no completed trials to report yet")
    if say:
        say(f"computing ({len(done)} trials)")
    t = run.space.target
    unit_ms, note = _unit_ms_from_table(t)
    fp = next((r.latency.fingerprint for r in done if r.latency), None) or {}
    n_inf = sum(not r.feasible for r in done)
    meta = {
        "run": str(run.root), "space": str(run.space.path or "-"),
        "objectives": ", ".join(f"{n} ({d})" for n, d in run.space.objectives),
        "target": f"{t.resolution}x{t.resolution}, batch {t.batch}, {t.threads} thread(s), {t.backend}",
        "trials": f"{len(done)} completed"
                  + (f" ({n_inf} infeasible: off the front, listed in the table)" if n_inf else "")
                  + f", {len(failed(records))} failed/pruned",
        "latency": format_reference(load_reference_note(run_path)),
        "measured on": str(fp.get("cpu", "?")), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    d = report_data(records, title=f"shufflesearch report: {run.name}", meta=meta,
                    resolution=t.resolution, unit_ms=unit_ms, predictor_note=note,
                    settings=run.space.guidelines.settings, run=str(run.root),
                    check_text=run_check_text(run_path))
    d.transfer = transfer_html(load_transfer(run.root))
    return d


__all__ = ["ReportData", "TrialDetail", "RungStats", "report_data", "load_report_data",
           "trial_details"]
