"""Pareto-aware asynchronous successive halving: which trials climb the fidelity ladder.

Optuna has no pruner for multi-objective studies, so the rule lives here, as pure functions
over plain numbers (the worker reads them from the study's storage and writes the decision
back). Objectives at a rung: the accuracy estimate at that rung (maximised) and the measured
latency (minimised).

The ranking is NSGA-II's (Deb et al. 2002): non-dominated sorting puts every point on a front
(0: nobody dominates it; 1: only front-0 points do; ...), and within a front the crowding
distance (the perimeter of the box spanned by its neighbours on the front, each objective
normalised by the front's range; the two ends of a front: infinite) prefers points where the
front is sparse, so the promoted set spreads along the front instead of bunching at one end.

The promotion rule is ASHA's (Li et al. 2020), asynchronous: when n trials have finished rung
k, the best floor(n / eta) of them by that ranking may start rung k+1. Two ways to apply it:
``should_promote`` decides once, when the trial finishes the rung (the worker then goes on
training it or stops it there; the best of the first few trials climbs, as with Optuna's
successive-halving pruner); ``promotable`` lists the trials a loop that can come back to a
paused trial may resume now (ASHA proper: a trial not in the top when it finished may enter
it later, as more trials finish below it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class Point(NamedTuple):
    id: int  # the trial number
    estimate: float  # accuracy estimate at the rung: higher is better
    latency: float  # measured latency: lower is better


def _clean(p: Point) -> tuple[float, float]:
    # A failed estimate or a missing latency counts as the worst value.
    e = p.estimate if math.isfinite(p.estimate) else -math.inf
    lat = p.latency if not math.isnan(p.latency) else math.inf
    return e, lat


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` on both objectives and better on one."""
    (ea, la), (eb, lb) = _clean(a), _clean(b)
    return ea >= eb and la <= lb and (ea > eb or la < lb)


def front_numbers(points: Sequence[Point]) -> list[int]:
    """The non-dominated front of every point, 0 being the Pareto front (O(n²) per front,
    ample for the hundreds of trials of a run)."""
    n = len(points)
    front = [-1] * n
    # A trial without a finite estimate (its training failed) sits on a last front of its own,
    # whatever its latency: a fast network that learned nothing must not be promoted.
    failed = {i for i in range(n) if not math.isfinite(points[i].estimate)}
    left = set(range(n)) - failed
    level = 0
    while left:
        current = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in current:
            front[i] = level
        left -= current
        level += 1
    for i in failed:
        front[i] = level
    return front


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II crowding distance of each point within ``points`` (one front): the two ends on
    either objective get infinity; the others the sum over objectives of the gap between their
    neighbours, divided by the front's range on that objective (0 when the range is 0)."""
    n = len(points)
    dist = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    vals = [_clean(p) for p in points]
    for m in range(2):
        order = sorted(range(n), key=lambda i: (vals[i][m], points[i].id))
        lo, hi = vals[order[0]][m], vals[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = hi - lo
        if not math.isfinite(span) or span <= 0:
            continue
        for r in range(1, n - 1):
            dist[order[r]] += (vals[order[r + 1]][m] - vals[order[r - 1]][m]) / span
    return dist


def ranking(points: Sequence[Point]) -> list[Point]:
    """``points`` best first: by front number, then by crowding distance within the front
    (larger first), then by trial id (earlier first) so that the order is deterministic."""
    fronts = front_numbers(points)
    crowd = [0.0] * len(points)
    for f in set(fronts):
        members = [i for i in range(len(points)) if fronts[i] == f]
        for i, d in zip(members, crowding_distances([points[i] for i in members])):
            crowd[i] = d
    order = sorted(range(len(points)), key=lambda i: (fronts[i], -crowd[i], points[i].id))
    return [points[i] for i in order]


def promotion_quota(n_finished: int, eta: int, min_one: bool = False) -> int:
    """How many of the ``n_finished`` trials at a rung may climb: floor(n / eta), or at least
    one with ``min_one`` (when n > 0)."""
    if eta < 2:
        raise ValueError(f"eta: {eta} must be >= 2")
    q = n_finished // eta
    return max(q, 1) if min_one and n_finished > 0 else q


def should_promote(trial_id: int, finished: Sequence[Point | tuple[int, float, float]], eta: int,
                   min_one: bool = True) -> bool:
    """Is ``trial_id`` in the best 1/eta of the trials that ``finished`` the rung (itself
    included)? ``finished``: (id, estimate, latency) of every trial that finished it.

    For deciding once, when the trial finishes the rung (Optuna's own successive-halving
    pruner decides that way): ``min_one`` lets the best of fewer than eta finished trials
    climb, as Optuna does; otherwise the first eta-1 trials of a run could never climb."""
    pts = [Point(*p) for p in finished]
    if trial_id not in {p.id for p in pts}:
        raise ValueError(f"trial {trial_id} is not among the trials that finished the rung")
    best = ranking(pts)[:promotion_quota(len(pts), eta, min_one)]
    return any(p.id == trial_id for p in best)


def promotable(finished: Sequence[Point | tuple[int, float, float]], promoted: Sequence[int] | set[int],
               eta: int, min_one: bool = False) -> list[int]:
    """The trials in the best 1/eta of ``finished`` that have not been promoted yet, best
    first: what a worker may start at the next rung now (ASHA's promotion check, for a loop
    that can come back to a paused trial)."""
    pts = [Point(*p) for p in finished]
    done = set(promoted)
    return [p.id for p in ranking(pts)[:promotion_quota(len(pts), eta, min_one)] if p.id not in done]
