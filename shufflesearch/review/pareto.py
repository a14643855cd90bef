"""Pareto-front analysis of a run (pure functions over trial records) and its rendering."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..common.stats import kendall_tau, spearman_rho
from ..errors import UserError
from ..search.front import dominated_beyond_noise, knee, on_one_reference, shown_front, tie_groups
from ..search.ladder import apply_estimator, chosen_estimator, describe_check, rung_estimate
from ..search.objective import LIMIT_ATTR
from ..search.records import GUIDELINES, TrialRecord, completed, failed, measured
from ..search.retime import load_retime, records_with_retime
from ..search.runfolder import Run, load_run
from ..search.storage import study_attr

# --- the table ----------------------------------------------------------------------------------


@dataclass
class ParetoRow:
    trial: int
    archid: str
    proxy: float | None  # the accuracy figure: one estimator at the top rung (None: no such figure)
    latency_ms: float
    iqr_ms: float
    mac: int
    macs: int
    params: int
    penalties: dict[str, float]  # G1..G4
    penalty: float  # combined
    baseline: str | None
    on_front: bool
    knee: bool
    duplicate_of: int | None = None
    short_train_acc: float | None = None  # validation accuracy after short training, if run
    feasible: bool = True  # meets every constraint of the space; only feasible rows are on the front
    breaks: dict[str, float] = field(default_factory=dict)  # broken constraint -> amount over its limit
    # The figure: latency_ms = ratio x the one reference figure all rows share (see
    # reference_note); measured_ms is what the search stored (the objective it saw).
    ratio: float | None = None  # latency / the reference network's, same window
    ratio_ci: list[float] | None = None  # its 95% interval
    reference_ms: float | None = None  # the reference figure latency_ms is ratio x (one per table)
    measured_ms: float | None = None
    drifted: bool = False  # the window ran beyond the drift bound off the reference's figure
    retimed: bool = False  # the figure comes from the run's side-by-side re-timing
    ties: list[int] = field(default_factory=list)  # shown trials whose latency is a tie with this one
    dominated_by: list[int] | None = None  # feasible baselines off the front: who dominates it beyond the noise
    # The fidelity ladder (None in a zero-cost run): the rung reached of top_rung, what the
    # proxy column is there (val_acc or sotl per step), why it stopped below the top.
    rung: int | None = None
    top_rung: int | None = None
    estimator: str | None = None
    stopped: str | None = None
    # Below the top rung: the highest rung's figure, labelled with its rung and estimator (it is
    # comparable only within that rung, so it never goes in the proxy column).
    rung_estimate: float | None = None
    rung_estimator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_rows(records: list[TrialRecord], all_trials: bool = False) -> list[ParetoRow]:
    """The rows of `shufflesearch pareto`: the 2-D front of the feasible trials on (proxy ↑,
    latency ↓), plus every baseline (shown even when dominated or infeasible, so the front is
    read against them), plus with ``all_trials`` every other completed trial (infeasible ones
    marked, with the constraints they break); sorted by latency."""
    done = on_one_reference(measured(records))
    front = shown_front(done)
    on = {r.trial for r in front}
    k = knee(front)
    keep = [r for r in done if r.trial in on or r.baseline or (all_trials and (r.complete or r.top_rung is not None))]
    shown = [r for r in done if r.trial in on or r.baseline]
    ties = tie_groups(shown)
    rows = []
    for r in sorted(keep, key=lambda r: (r.latency_ms, -(r.proxy if r.proxy is not None else -math.inf), r.trial)):
        g = r.guidelines
        below = rung_estimate(r)
        rows.append(ParetoRow(
            trial=r.trial, archid=r.archid, proxy=None if r.proxy is None else float(r.proxy),
            latency_ms=float(r.latency_ms),
            iqr_ms=_iqr_ms(r),
            mac=int(r.mac), macs=int(r.macs), params=int(r.params),
            penalties={x: float(g.penalties.get(x, 0.0)) for x in GUIDELINES},
            penalty=float(g.total), baseline=r.baseline,
            on_front=r.trial in on, knee=k is not None and r.trial == k.trial,
            duplicate_of=r.duplicate_of,
            short_train_acc=(r.short_train or {}).get("val_acc"),
            feasible=r.feasible, breaks=r.broken,
            ratio=r.ratio, ratio_ci=r.ratio_ci,
            reference_ms=(r.latency_ms / r.ratio if r.ratio and r.measured_ms is not None else r.reference_ms),
            measured_ms=r.measured_ms, drifted=r.drifted,
            retimed=bool(r.retimed), ties=ties.get(r.trial, []),
            dominated_by=(None if not r.baseline or r.trial in on or not r.feasible or r.proxy is None
                          else dominated_beyond_noise(r, front)),
            rung=r.rung, top_rung=r.top_rung, estimator=r.estimator,
            stopped=None if r.at_top else r.stopped,
            rung_estimate=None if below is None else below[2],
            rung_estimator=None if below is None else below[1],
        ))
    return rows


def _iqr_ms(r: TrialRecord) -> float:
    """The figure's IQR in the units latency_ms is shown in (the same reference figure)."""
    f = r.figure
    if f is None:
        return math.nan
    return float(f.iqr_ms) * (float(r.latency_ms) / float(f.median_ms)) if f.median_ms else float(f.iqr_ms)


def reference_note(records: list[TrialRecord], retime: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every shown figure is scaled by: the reference network, its absolute figure, and
    whether the figures come from the run's side-by-side re-timing (when, drift flag)."""
    done = completed(records)
    if retime:
        ref = retime.get("reference") or {}
        return {"arch": ref.get("arch"), "archid": ref.get("archid"), "ms": ref.get("ms"),
                "spread": ref.get("spread"), "retimed_at": retime.get("at"),
                "retime_seconds": retime.get("seconds"), "speed_factor": retime.get("speed_factor"),
                "drifted": bool(retime.get("drifted"))}
    shifted = on_one_reference(done)
    ms = next((r.latency_ms / r.ratio for r in shifted if r.ratio), None)
    ref = next((r.latency.reference for r in done if r.latency and r.latency.reference), None) or {}
    return {"arch": ref.get("arch"), "archid": ref.get("archid"), "ms": ms, "spread": None,
            "retimed_at": None, "drifted": any(r.drifted for r in done)}


def format_reference(note: dict[str, Any]) -> str:
    """One line saying what the latency column is."""
    if not note.get("ms"):
        return "latency: each trial's own median (protocol 1, no reference)"
    how = (f"re-timed side by side at {note['retimed_at']} ({note.get('retime_seconds', 0):.1f} s window"
           + (f", speed factor {note['speed_factor']:.3f}" if note.get("speed_factor") else "") + ")"
           if note.get("retimed_at") else "the run's median reference figure (not re-timed: see --retime)")
    flag = "; DRIFTED: the window ran >10% off the reference's usual speed" if note.get("retimed_at") and note.get("drifted") else ""
    lim = note.get("limit")
    limit = (f"; latency_ms limit {lim['ms']:g} ms = ratio {lim['ratio']:.4f} (converted at reference "
             f"{lim['reference_ms']:.3f} ms), {lim['ratio'] * note['ms']:.3f} ms on this reference"
             if lim and lim.get("ratio") else "")
    return (f"latency ms = ratio x reference {note['arch']} ({note['archid']}) at {note['ms']:.3f} ms, "
            f"{how}{flag}{limit}")


def _ratio_cell(r: ParetoRow) -> str:
    if r.ratio is None:
        return "-"
    ci = f" [{r.ratio_ci[0]:.3f}, {r.ratio_ci[1]:.3f}]" if r.ratio_ci else ""
    return f"{r.ratio:.3f}{ci}"


def _flags(r: ParetoRow) -> str:
    """~ drifted, = a latency tie with another shown row, d a baseline dominated beyond the noise."""
    return ("~" if r.drifted else "") + ("=" if r.ties else "") + ("d" if r.dominated_by else "")


def format_breaks(breaks: dict[str, float]) -> str:
    """``macs_m +9.06, latency_ms +0.4``: each broken constraint and how far over its limit."""
    return ", ".join(f"{k} +{v:.3g}" for k, v in breaks.items())


def _m(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def format_pareto(rows: list[ParetoRow], objectives: Sequence[str] = ("proxy", "latency"),
                  reference: dict[str, Any] | None = None) -> str:
    """Fixed-width table; the legend says what the marks mean and which front is shown.
    ``reference`` (reference_note) adds the line saying what the latency figures are scaled by."""
    head = ["", "trial", "archid", "proxy", "latency ms", "ratio [95% CI]", "MAC", "MACs", "params",
            *GUIDELINES, "baseline"]
    body = []
    for r in rows:
        mark = (("K" if r.knee else "*" if r.on_front else " " if r.feasible else "x") + ("B" if r.baseline else " ")
                + _flags(r))
        body.append([
            mark, str(r.trial), r.archid, "-" if r.proxy is None else f"{r.proxy:.4f}",
            f"{r.latency_ms:.3f} ± {r.iqr_ms:.3f}", _ratio_cell(r),
            _m(r.mac), _m(r.macs), _m(r.params), *(f"{r.penalties[g]:.2f}" for g in GUIDELINES),
            r.baseline or "",
        ])
    if any(r.short_train_acc is not None for r in rows):  # multi-fidelity column
        head.insert(4, "acc")
        for row, r in zip(body, rows):
            row.insert(4, "" if r.short_train_acc is None else f"{r.short_train_acc:.3f}")
    ladder = any(r.top_rung is not None for r in rows)
    if ladder:  # the rung each row reached, and below the top that rung's own figure
        if any(r.rung_estimate is not None for r in rows):
            head.insert(4, "below-top estimate")
            for row, r in zip(body, rows):
                row.insert(4, "" if r.rung_estimate is None else
                           f"rung {r.rung}: {r.rung_estimate:.4f} {r.rung_estimator}")
        head.insert(4, "rung")
        for row, r in zip(body, rows):
            row.insert(4, "" if r.rung is None else f"{r.rung}/{r.top_rung}")
    last = len(head) - 1  # the baseline name, left-aligned like the marks and the archid
    if not all(r.feasible for r in rows):  # which constraints the infeasible rows break
        head.append("breaks")
        for row, r in zip(body, rows):
            row.append(format_breaks(r.breaks))
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) if i in (0, 2) or i >= last else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [head, *body]]
    extra = [o for o in objectives if o not in ("proxy", "latency")]
    note = (f"; the search also minimised {', '.join(extra)}, so trials off this 2-D front "
            f"may still be Pareto-optimal there (see --all)" if extra else "")
    lines += ["", "front on (proxy ↑, latency median ↓ ± IQR)" + note,
              "* non-dominated   K knee (best trade-off)   B baseline (shown even when dominated); "
              "MAC = memory access cost in elements, MACs = multiply-accumulates"
              + ("; acc = validation accuracy after the run's short training" if "acc" in head else "")]
    if any(r.ties for r in rows):
        order = {r.trial: i for i, r in enumerate(rows)}
        pairs = [f"{r.trial}={t}" for r in rows for t in r.ties if order.get(t, -1) > order[r.trial]]
        lines.append("= latency tie (difference inside the measured noise): " + ", ".join(pairs))
    if any(r.drifted for r in rows):
        lines.append("~ drifted: measured while the machine ran >10% off the reference's usual speed")
    for r in rows:
        if r.baseline and not r.on_front:
            lines.append(f"{r.baseline}: " + _baseline_verdict(r))
    if reference:
        lines.append(format_reference(reference))
    if ladder:
        lines.append(ladder_legend(rows))
    if "breaks" in head:
        lines.append("x infeasible: breaks the constraint(s) listed (by how much over the limit); "
                     "never on the front, picked, short-trained or exported")
    return "\n".join(lines)


def _baseline_verdict(r: ParetoRow) -> str:
    """Why a baseline is off the front: it breaks a constraint, or trials dominate it beyond the
    noise, or it is off the front only within the noise."""
    if not r.feasible:
        return f"infeasible, it breaks {format_breaks(r.breaks)} (x): never on the front"
    if r.proxy is None:
        return f"no accuracy figure on the front's scale ({r.stopped or 'not trained'}): compared on latency only"
    if r.dominated_by:
        return f"dominated beyond the noise by trial(s) {', '.join(map(str, r.dominated_by))} (d)"
    return "not dominated beyond the noise (off the front only within it)"


def ladder_legend(rows: list[ParetoRow]) -> str:
    """What the proxy and rung columns mean in a ladder run, and how many rows stopped early."""
    est = sorted({r.estimator for r in rows if r.estimator})
    low = sum(1 for r in rows if r.rung is not None and r.rung != r.top_rung)
    what = " / ".join(ESTIMATOR_WORDS.get(e, e) for e in est) or "the estimate"
    return (f"proxy = {what} at the top rung, the one scale of the front; rung k/K = trained to "
            f"rung k of K" + (f"; {low} row(s) stopped below the top: no proxy (-), their "
                              "below-top estimate is that rung's figure, comparable only within "
                              "that rung; never on the front, never picked" if low else ""))


ESTIMATOR_WORDS = {"val_acc": "val_acc (validation accuracy)",
                   "sotl": "sotl (negated mean training loss per step)"}


def format_failed(records: list[TrialRecord]) -> str:
    bad = failed(records)
    if not bad:
        return "no failed or pruned trials"
    w = max(len(str(r.trial)) for r in bad)
    lines = [f"{str(r.trial).rjust(w)}  {r.state.lower():<7} {r.archid or '-':<12}  "
             f"{r.fail_reason}" for r in bad]
    return "\n".join(lines) + f"\n{len(bad)} failed/pruned trial(s)"


# --- hypervolume and rank correlation ------------------------------------------------------------


def hypervolume_2d(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both coordinates minimised) and bounded by ``ref``.

    A sweep over x: after sorting, each point that lowers the running best y adds the strip
    between it and the next x. Points not strictly better than ``ref`` in both add nothing.
    """
    pts = sorted((x, y) for x, y in points if x < ref[0] and y < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y >= best_y:
            continue
        # this point owns [x, ref_x) up to best_y; later points only cut below it
        area += (ref[0] - x) * (best_y - y)
        best_y = y
    return area


@dataclass
class HypervolumeHistory:
    trials: list[int]  # trial numbers, ascending
    values: list[float]  # hypervolume of the completed trials up to each one
    ref: tuple[float, float]  # (proxy, latency_ms) reference: worst seen, pushed outwards


def hypervolume_history(records: list[TrialRecord], margin: float = 0.1) -> HypervolumeHistory:
    """Hypervolume of (proxy ↑, latency ↓) after every completed feasible trial, in trial
    order (the area the feasible front dominates; infeasible trials add nothing).

    The reference point is the worst proxy and latency over the whole run moved outwards by
    ``margin`` of their ranges, fixed for the whole history so values can be compared."""
    done = [r for r in completed(records) if r.feasible]
    if not done:
        return HypervolumeHistory([], [], (math.nan, math.nan))
    ps = [r.proxy for r in done]
    ls = [r.latency_ms for r in done]
    ref = (min(ps) - margin * ((max(ps) - min(ps)) or 1.0), max(ls) + margin * ((max(ls) - min(ls)) or 1.0))
    pts: list[tuple[float, float]] = []
    trials, values = [], []
    for r in sorted(done, key=lambda r: r.trial):
        pts.append((-r.proxy, r.latency_ms))
        trials.append(r.trial)
        values.append(hypervolume_2d(pts, (-ref[0], ref[1])))
    return HypervolumeHistory(trials, values, ref)


@dataclass
class RankCorrelation:
    spearman: float
    kendall: float
    n: int


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> RankCorrelation:
    """Spearman's rho and Kendall's tau-b (common.stats); nan below 3 points or on a constant side."""
    n = len(xs)
    if n < 3:
        return RankCorrelation(math.nan, math.nan, n)
    return RankCorrelation(spearman_rho(xs, ys), kendall_tau(xs, ys), n)


# --- picking a trial for export ---------------------------------------------------------------


def pick_trial(records: list[TrialRecord], *, trial: int | None = None, use_knee: bool = False,
               max_latency: float | None = None) -> TrialRecord:
    """The record that `export` bundles; UserError says why there is none (naming the argument
    that picked it: ``trial``, ``max_latency``). Only a feasible completed trial is ever
    picked: the knee and ``max_latency`` choose on the feasible front, and ``trial`` of an
    infeasible trial is refused with the constraints it breaks."""
    r = _pick(records, trial, use_knee, max_latency)
    if r.arch is None and "arch" in r.extra:  # stored in a form records.py could not read
        raise UserError(f"trial {r.trial}: this version cannot read its stored architecture")
    return r


def _pick(records: list[TrialRecord], trial: int | None, use_knee: bool,
          max_latency: float | None) -> TrialRecord:
    done = on_one_reference(completed(records))
    if trial is not None:
        shown = {c.trial: c for c in done}
        for r in records:
            if r.trial == trial:
                r = shown.get(trial, r)  # feasibility on the yardstick shown
                if r.state != "COMPLETE":
                    raise UserError(f"trial {r.state.lower()} ({r.fail_reason or 'no reason'}); "
                                    "pick a completed one", field="trial", value=trial)
                if r.feasible and not r.at_top:
                    raise UserError(f"stopped at rung {r.rung} of {r.top_rung}, so it has no accuracy "
                                    "figure on the front's scale; pick a trial that reached the top "
                                    "rung (`shufflesearch pareto RUN`)", field="trial", value=trial)
                if not r.feasible:
                    raise UserError(f"infeasible, it breaks {format_breaks(r.broken)} (over the limit); "
                                    "pick a feasible one", field="trial", value=trial)
                return r
        raise UserError(f"no such trial (the run has trials {min(r.trial for r in records)}.."
                        f"{max(r.trial for r in records)})" if records else "the run has no trials yet",
                        field="trial", value=trial)
    front = shown_front(done)
    if not front:
        if done:
            raise UserError(f"no completed trial meets the space's constraints ({len(done)} completed, "
                            f"all infeasible: see `shufflesearch pareto RUN --all`)")
        raise UserError("the run has no completed trials yet")
    if use_knee:
        k = knee(front)
        assert k is not None
        return k
    if max_latency is not None:
        under = [r for r in front if r.latency_ms <= max_latency]
        if not under:
            raise UserError(f"no trial on the front is that fast (fastest: trial {front[0].trial} at "
                            f"{front[0].latency_ms:.3f} ms)", field="max_latency", value=max_latency)
        return max(under, key=lambda r: (r.proxy, -r.latency_ms))
    raise UserError("pick a trial: trial=N, use_knee=True or max_latency=MS")


def export_info(rec: TrialRecord, run_name: str) -> dict[str, Any]:
    """What the run stored about a trial, handed to export_arch for report.md (not recomputed)."""
    fig = rec.figure
    g = rec.guidelines
    info: dict[str, Any] = {
        "run": run_name,
        "trial": rec.trial,
        "latency": fig.to_dict() if fig else {},
        "fingerprint": (fig.fingerprint if fig else None) or (rec.latency.fingerprint if rec.latency else None),
        "latency_ms": rec.latency_ms,
        "latency_measured_ms": rec.measured_ms,
        "latency_ratio": rec.ratio,
        "latency_ratio_ci": rec.ratio_ci,
        "latency_reference": fig.reference if fig else None,
        "latency_drifted": rec.drifted,
        "latency_retimed": "side by side at the end of the run" if rec.retimed else None,
        "proxy": rec.proxy,
        "proxy_raw": rec.proxy_raw,
        "proxies": rec.proxies or None,
        "guideline_penalties": g.penalties,
        "guideline_total": g.total,
        "guideline_findings": g.n_findings,
        "fidelity_rung": None if rec.rung is None else f"{rec.rung} of {rec.top_rung}",
        "accuracy_estimator": rec.estimator,
    }
    if rec.baseline:
        info["baseline"] = rec.baseline
    if rec.duplicate_of is not None:
        info["duplicate_of"] = rec.duplicate_of
    return {k: v for k, v in info.items() if v is not None}


def run_check_text(path: str | Path) -> str | None:
    """The run's stored self-check in a few lines (None in a zero-cost run)."""
    run, study = load_run(path)
    return None if run.space.fidelity is None else describe_check(study_attr(study, "check"))


def load_records(path: str | Path) -> tuple[Run, list[TrialRecord]]:
    """(Run, records) of a run folder, short-training results attached; UserError for a bad
    path (I/O edge of this module)."""
    run, study = load_run(path)
    records = records_with_retime(study)  # the end-of-run side-by-side figures, if any
    chosen = chosen_estimator(study, run.space)
    if chosen:  # one scale: the top-rung figure in the estimator the check chose
        apply_estimator(records, chosen)
    trained = study_attr(study, "short_train", {})  # multi-fidelity results, if any
    for r in records:
        if str(r.trial) in trained:
            r.short_train = trained[str(r.trial)]
    return run, records


def load_reference_note(path: str | Path) -> dict[str, Any]:
    """reference_note of a run folder (with its stored re-timing)."""
    run, study = load_run(path)
    note = reference_note(records_with_retime(study), load_retime(study))
    note["limit"] = study_attr(study, LIMIT_ATTR)  # the latency limit on the ratio yardstick
    return note
