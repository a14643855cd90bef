"""What the HTML report shows, computed from a run's records: pure data, no drawing (html.py
draws it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..model.arch import Arch
from ..model.cost import costs
from ..search.records import TrialRecord, measured
from .pareto import (
    HypervolumeHistory,
    ParetoRow,
    RankCorrelation,
    completed,
    failed,
    hypervolume_history,
    pareto_rows,
    rank_correlation,
)

# --- what to draw (pure) ----------------------------------------------------------------------


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
    transfer: str = ""  # the runtimes section (transfer.py), when the run carries transfer.json
    ladder: str = ""  # the fidelity ladder's section (ladder_section), empty in a zero-cost run
    # The ladder's figure: per trial that trained, (trial, baseline?, [(rung, estimate), ...]) in
    # the estimator it reports, and how many trials reached each rung (index = rung).
    ladder_curves: list[tuple[int, bool, list[tuple[int, float]]]] = field(default_factory=list)
    ladder_reached: list[int] = field(default_factory=list)


UnitMs = Callable[[Arch], dict[str, float] | None]  # arch -> predicted ms per unit, or None


def _picks(rows: list[ParetoRow], records: dict[int, TrialRecord], resolution: int,
           unit_ms: UnitMs | None) -> list[Pick]:
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
    picks = []
    for label, r in chosen:
        arch = records[r.trial].arch
        if arch is None:  # stored in a form this version cannot read
            continue
        c = costs(arch, resolution)
        ms = unit_ms(arch) if unit_ms else None
        units = [UnitRow(name, u.params, u.macs, u.mac, (ms or {}).get(name)) for name, u in c.units.items()]
        picks.append(Pick(label, r.trial, r.archid, r.latency_ms, units))
    return picks


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


@dataclass
class RungRow:
    """One rung of the report's ladder table, over the trials that reached it."""

    rung: int
    reached: int  # trials that trained it
    stopped: int  # trials whose highest rung it is
    steps: int | None  # its training steps (None: nobody reached it)
    val_acc: list[float]  # where scored
    sotl_per_step: list[float]  # RungResult.estimate("sotl")


def ladder_rows(records: list[TrialRecord]) -> tuple[list[RungRow], int]:
    """The report's ladder table: one row per rung, and how many measured ladder trials never
    trained (infeasible). Empty in a zero-cost run."""
    recs = [r for r in measured(records) if r.rungs]
    top = max((r.top_rung or 0) for r in recs) if recs else 0
    rows = []
    for k in range(1, top + 1):
        at = [res for r in recs if (res := r.rung_result(k)) is not None]
        rows.append(RungRow(k, len(at), sum(1 for r in recs if r.rung == k), at[0].steps if at else None,
                            [a.estimate("val_acc") for a in at if a.has("val_acc")],
                            [a.estimate("sotl") for a in at if a.has("sotl")]))
    never = sum(1 for r in measured(records) if r.top_rung is not None and not r.rungs)
    return rows, never


def report_data(records: list[TrialRecord], *, title: str, meta: dict[str, str],
                resolution: int, unit_ms: UnitMs | None = None, predictor_note: str = "") -> ReportData:
    """Everything the page shows, computed from the run's trial records."""
    rows = pareto_rows(records, all_trials=True)
    lat = [r.latency_ms for r in rows]
    bad = failed(records)
    curves, reached = ladder_figure_data(records)
    return ReportData(
        title=title, meta=meta, rows=rows,
        macs_corr=rank_correlation([r.macs for r in rows], lat),
        mac_corr=rank_correlation([r.mac for r in rows], lat),
        hv=hypervolume_history(records),
        picks=_picks(rows, {r.trial: r for r in completed(records)}, resolution, unit_ms),
        predictor_note=predictor_note, n_failed=len(bad),
        failures=[(r.trial, r.fail_reason or "") for r in bad],
        ladder_curves=curves, ladder_reached=reached,
    )
