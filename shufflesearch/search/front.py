"""The Pareto front of a run's records, its knee, and points spread along it: pure functions,
used by the search (progress, short training) and by everything that reviews a run.

Only feasible records can be on the front: a trial that breaks a constraint of the space
(``TrialRecord.feasible`` is False) is never on the front, never the knee, and so never picked
for export or short training."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..measure.target import Latency, is_tie
from .records import TrialRecord, latency_from_dict


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b when it is no worse everywhere and better somewhere (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _key(r: TrialRecord) -> tuple[float, float]:
    return (-float(r.proxy), float(r.latency_ms))  # proxy is maximised


def pareto_front(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Feasible completed records not dominated on (proxy ↑, latency ↓), sorted by latency;
    one record per architecture. In a ladder run only the trials at the top rung compete
    (the front is drawn at the highest fidelity)."""
    pts = [r for r in records if r.complete and r.feasible and r.at_top]
    front = [r for r in pts if not any(dominates(_key(o), _key(r)) for o in pts if o is not r)]
    seen, out = set(), []
    for r in sorted(front, key=lambda r: (r.latency_ms, -r.proxy)):
        if r.archid not in seen:
            seen.add(r.archid)
            out.append(r)
    return out


def knee(front: list[TrialRecord]) -> TrialRecord | None:
    """The front's knee: the point farthest from the line joining its two ends, after scaling
    both objectives to [0, 1] (the usual "best trade-off" pick)."""
    if len(front) <= 2:
        return front[len(front) // 2] if front else None
    xs = [r.latency_ms for r in front]
    ys = [r.proxy for r in front]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    pts = [((x - x0) / sx, (y - y0) / sy) for x, y in zip(xs, ys)]
    (ax, ay), (bx, by) = pts[0], pts[-1]
    norm = math.hypot(bx - ax, by - ay) or 1.0
    dist = [abs((bx - ax) * (ay - py) - (ax - px) * (by - ay)) / norm for px, py in pts]
    return front[max(range(len(front)), key=dist.__getitem__)]


def spread_indices(n: int, k: int) -> list[int]:
    """``min(k, n)`` distinct indices spread evenly over ``range(n)``, both ends included when
    k >= 2 (k = 1 gives the middle). Rounds half up so that equal steps stay distinct."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return [int(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]


# --- one reference, side-by-side figures, ties ----------------------------------------------------
# Every protocol-2 figure is ratio x the reference's scheduled absolute figure at the time it
# was measured; that figure moves slowly over a run (median of the last timings), so two ms
# figures taken minutes apart carry two slightly different yardsticks. The ratios carry none:
# a reviewer puts every record on ONE reference figure (the re-timing's, else the run's median)
# and ranks by ratio x that figure, which orders exactly as the ratios do.


def run_reference_ms(records: Iterable[TrialRecord]) -> float | None:
    """The run's reference figure: the median of the reference ms its records were scaled by."""
    xs = sorted(r.reference_ms for r in records if r.ratio is not None and r.reference_ms)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def attach_retime(records: Iterable[TrialRecord], retime: dict[str, Any] | None) -> None:
    """Set ``retimed`` on the records a study's ``retime`` attribute re-timed (by trial number)."""
    figs = (retime or {}).get("trials") or {}
    for r in records:
        r.retimed = latency_from_dict(figs.get(str(r.trial)))


def on_one_reference(records: Sequence[TrialRecord], reference_ms: float | None = None) -> list[TrialRecord]:
    """Copies of ``records`` whose ``latency_ms`` is ratio x one reference figure (``measured_ms``
    keeps the stored one); records without a ratio (protocol 1) keep theirs. The figure is
    ``reference_ms``, else the re-timing's reference, else the run's median reference. The
    latency limit moves with them: feasibility is the shown ratio against the limit's ratio,
    and how far a trial is over it reads in the shown ms."""
    if reference_ms is None:
        ref = next((r.retimed.reference for r in records if r.retimed), None)
        reference_ms = float(ref["ms"]) if ref and ref.get("ms") else run_reference_ms(records)
    out = []
    for r in records:
        c = dataclasses.replace(r, extra=dict(r.extra), constraints=dict(r.constraints))
        if reference_ms and r.ratio is not None and r.latency_ms is not None:
            c.measured_ms = r.latency_ms
            c.latency_ms = r.ratio * reference_ms
            if r.latency_limit and "latency_ms" in c.constraints:
                # The limit on the same yardstick as the figure shown: the figure's ratio (the
                # re-timing's, if any) against the limit's ratio, in the ms of this reference.
                c.constraints["latency_ms"] = (r.ratio - r.latency_limit) * reference_ms
        out.append(c)
    return out


def latency_over(rec: TrialRecord, limit_ms: float, reference_ms: float | None = None) -> float:
    """How far the record's latency is over ``limit_ms``, in ms: on the ratio yardstick when the
    limit was converted to a ratio (``rec.latency_limit``), in ms at ``reference_ms`` (default:
    the reference figure the limit was converted with, so the amount reads against the limit as
    given); otherwise, for records of older runs, the stored ms minus the limit."""
    if rec.latency_limit and rec.ratio is not None:
        ref = reference_ms if reference_ms is not None else limit_ms / rec.latency_limit
        return (rec.ratio - rec.latency_limit) * ref
    return float(rec.latency_ms - limit_ms)


def shown_front(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The front that is shown, picked from and exported: when the run was re-timed side by
    side, the front of the re-timed records (the search's front and the baselines, all from
    one window); otherwise the front of every record."""
    recs = list(records)
    retimed = [r for r in recs if r.retimed]
    return pareto_front(retimed if retimed else recs)


def latency_of(r: TrialRecord) -> Latency:
    """The record's figure, with ``median_ms`` as the record shows it."""
    fig = r.figure or latency_from_dict({"median_ms": math.nan})
    assert fig is not None
    return dataclasses.replace(fig, median_ms=float(r.latency_ms if r.latency_ms is not None else fig.median_ms))


def tie_groups(records: Sequence[TrialRecord]) -> dict[int, list[int]]:
    """trial -> the other trials (among ``records``) whose latency differs from it by no more
    than the measured noise (``measure.target.is_tie``)."""
    lats = {r.trial: latency_of(r) for r in records}
    out: dict[int, list[int]] = {r.trial: [] for r in records}
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            if a.archid != b.archid and is_tie(lats[a.trial], lats[b.trial]):
                out[a.trial].append(b.trial)
                out[b.trial].append(a.trial)
    return out


def dominated_beyond_noise(b: TrialRecord, others: Iterable[TrialRecord]) -> list[int]:
    """The trials that dominate ``b`` beyond the noise: proxy at least as good and faster by
    more than the measured noise (a point that is only a latency tie might be the slower one,
    so it does not count)."""
    lb = latency_of(b)
    return [o.trial for o in others
            if o.trial != b.trial and o.archid != b.archid and o.feasible and o.complete
            and o.proxy >= b.proxy and o.latency_ms < b.latency_ms and not is_tie(latency_of(o), lb)]
