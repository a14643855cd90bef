"""The Pareto front of a run's records, its knee, and points spread along it: pure functions,
used by the search (progress, short training) and by everything that reviews a run.

Only feasible records can be on the front: a trial that breaks a constraint of the space
(``TrialRecord.feasible`` is False) is never on the front, never the knee, and so never picked
for export or short training."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .records import TrialRecord


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
