"""Rank statistics, in one place: Kendall's tau, Spearman's rho (scipy), and a percentile
bootstrap over the paired items."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.stats import kendalltau as _kendalltau
from scipy.stats import spearmanr as _spearmanr

Pairs = Sequence[float] | np.ndarray


def _ok(a: np.ndarray, b: np.ndarray) -> bool:
    # A rank correlation needs two items and some spread on both sides.
    return len(a) >= 2 and len(a) == len(b) and np.ptp(a) > 0 and np.ptp(b) > 0


def kendall_tau(a: Pairs, b: Pairs) -> float:
    """Kendall's tau-b of the paired values; NaN when it is undefined (fewer than two items,
    or one side constant)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(_kendalltau(x, y).statistic) if _ok(x, y) else float("nan")


def kendall_tau_rows(x: Pairs, ys: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of ``x`` against every row of ``ys`` (shape (rows, n)) at once: the same
    figure as ``kendall_tau`` per row (concordant minus discordant pairs over the square root
    of the untied pair counts), vectorised for simulations of thousands of rows."""
    x = np.asarray(x, dtype=float)
    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    iu = np.triu_indices(len(x), 1)
    sx = np.sign(x[:, None] - x[None, :])[iu]  # (pairs,)
    sy = np.sign(ys[:, :, None] - ys[:, None, :])[:, iu[0], iu[1]]  # (rows, pairs)
    den = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy, axis=1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sy * sx).sum(axis=1) / den, np.nan)


def spearman_rho(a: Pairs, b: Pairs) -> float:
    """Spearman's rank correlation of the paired values; NaN when undefined."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(_spearmanr(x, y).statistic) if _ok(x, y) else float("nan")


class Interval(NamedTuple):
    lo: float
    hi: float

    def contains(self, v: float) -> bool:
        return self.lo <= v <= self.hi


def bootstrap_ci(fn: Callable[[np.ndarray, np.ndarray], float], a: Pairs, b: Pairs, *,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``fn(a, b)``, resampling the pairs with replacement.
    Resamples on which ``fn`` is undefined (NaN) are dropped; NaN bounds when all are."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        v = fn(x[i], y[i])
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return Interval(float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    return Interval(float(np.percentile(vals, tail)), float(np.percentile(vals, 100 - tail)))
