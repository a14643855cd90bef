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

The promotion rule is successive halving, asynchronous and capped: when n trials have finished
rung k, the best q(n) = max(1, floor(n / eta)) of them by that ranking may start rung k+1, and
only while fewer than q(n) have started it (``should_promote``, decided once, when the trial
finishes the rung). The cap is what makes it halve. ASHA's own rule (Li et al. 2020, and
Optuna's successive-halving pruner) checks only the first condition, so under a sampler that
improves over time nearly every new trial is in the top 1/eta of the field seen so far and
climbs: a budget-200 run promoted 52%, 62% and 75% of its rungs instead of 33%. Capped
variants of ASHA (vega's, the "delayed" ASHA of the Hyper-Tune code) use the same count. So
the number of trials that reach rung k+1 is at most q(n_k) <= ceil(n_k / eta), plus one per
worker that decided at the same moment.

Ties (the same front and crowding distance, e.g. the two infinite ends of a front) are broken
by a hash of the trial number, not by the number itself, so the older trial is not preferred.
``promotable`` lists the trials a loop that can come back to a paused trial may resume now
(ASHA proper) under the same cap.
"""

from __future__ import annotations

import hashlib
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
        order = sorted(range(n), key=lambda i: (vals[i][m], tiebreak(points[i].id)))
        lo, hi = vals[order[0]][m], vals[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = hi - lo
        if not math.isfinite(span) or span <= 0:
            continue
        for r in range(1, n - 1):
            dist[order[r]] += (vals[order[r + 1]][m] - vals[order[r - 1]][m]) / span
    return dist


def tiebreak(trial_id: int) -> int:
    """A fixed pseudo-random order of trial ids (the first 8 bytes of SHA-256 of the id):
    deterministic, and blind to which trial came first."""
    return int.from_bytes(hashlib.sha256(str(int(trial_id)).encode()).digest()[:8], "big")


def ranking(points: Sequence[Point]) -> list[Point]:
    """``points`` best first: by front number, then by crowding distance within the front
    (larger first), then by ``tiebreak`` of the trial id, so that the order is deterministic
    and does not favour older trials."""
    fronts = front_numbers(points)
    crowd = [0.0] * len(points)
    for f in set(fronts):
        members = [i for i in range(len(points)) if fronts[i] == f]
        for i, d in zip(members, crowding_distances([points[i] for i in members])):
            crowd[i] = d
    order = sorted(range(len(points)), key=lambda i: (fronts[i], -crowd[i], tiebreak(points[i].id)))
    return [points[i] for i in order]


def promotion_quota(n_finished: int, eta: int, min_one: bool = False) -> int:
    """How many of the ``n_finished`` trials at a rung may climb: floor(n / eta), or at least
    one with ``min_one`` (when n > 0)."""
    if eta < 2:
        raise ValueError(f"eta: {eta} must be >= 2")
    q = n_finished // eta
    return max(q, 1) if min_one and n_finished > 0 else q


def should_promote(trial_id: int, finished: Sequence[Point | tuple[int, float, float]], eta: int,
                   min_one: bool = True, started: int = 0) -> bool:
    """May ``trial_id`` start the next rung? ``finished``: (id, estimate, latency) of every
    search trial that finished this rung (itself included); ``started``: how many of the
    others have already started the next rung. Yes when the trial is in the best q of
    ``finished`` and fewer than q have started, q = ``promotion_quota`` (module docstring).

    ``min_one`` lets the best of fewer than eta finished trials climb, as Optuna's pruner
    does; otherwise the first eta-1 trials of a run could never climb."""
    pts = [Point(*p) for p in finished]
    if trial_id not in {p.id for p in pts}:
        raise ValueError(f"trial {trial_id} is not among the trials that finished the rung")
    q = promotion_quota(len(pts), eta, min_one)
    if started >= q:
        return False
    return any(p.id == trial_id for p in ranking(pts)[:q])


def promotable(finished: Sequence[Point | tuple[int, float, float]], promoted: Sequence[int] | set[int],
               eta: int, min_one: bool = False) -> list[int]:
    """The trials in the best 1/eta of ``finished`` that have not been promoted yet, best
    first, as many as the cap leaves room for: what a loop that can resume a paused trial may
    start at the next rung now."""
    pts = [Point(*p) for p in finished]
    done = set(promoted)
    q = promotion_quota(len(pts), eta, min_one)
    room = max(0, q - len(done))
    return [p.id for p in ranking(pts)[:q] if p.id not in done][:room]
