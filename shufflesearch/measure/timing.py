"""The one timing loop: every latency figure, on every runtime, is timed here.

A ``Runner`` is one forward pass of one model on a fixed input, as a zero-argument callable;
the backends (backends.py: torch eager, ONNX Runtime fp32 and int8; compiled.py: the
AOTInductor package) only say how to build one. Everything about how it is timed is decided
once, in ``time_rounds``:

  * the thread count (every runner of a window runs on the same number of threads; torch's is
    fixed for the window and restored afterwards, ONNX Runtime sessions carry theirs), under
    ``inference_mode``, optionally holding the cross-process timing lock;
  * the clock: the thread's CPU clock at one thread, the wall clock otherwise (``env.clock_for``);
  * warm-up in rounds until consecutive timings settle;
  * rounds, one sample of each runner per round in a rotating order, a sample repeating tiny
    models so that it lasts >= ~2 ms;
  * the stopping rule: the interval of every runner's ratio to the reference runner is tight,
    or the time cap is hit.

The estimators below turn the paired rounds into the stored ratio and its interval; the
latency protocol (protocol.py) and the guideline bench both read their figures through them.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..common.stats import bootstrap_ci
from ..common.threads import torch_threads
from .env import clock_for, timing_lock

__all__ = ["Runner", "time_rounds", "iqr", "estimate", "estimate_ci", "ESTIMATORS", "ESTIMATOR",
           "MIN_RUNS", "SETTLE", "TARGET_REL_CI"]

MIN_RUNS = 10  # fewest timed rounds an estimate is taken from
SETTLE = 0.05  # warm-up ends when two consecutive medians of 3 agree within 5%
TARGET_REL_CI = 0.01  # stop when every ratio's interval half-width is within 1% of it
SAMPLE_S = 0.002  # a sample repeats a tiny model until it lasts this long (clock resolution)

_CLOCKS = {"wall": time.perf_counter, "thread_cpu": time.thread_time}


class Runner:
    """One forward pass per call on a fixed input; ``setup_s`` says what building it cost.

    ``fn`` is the bare forward: ``time_rounds`` calls it inside the window it sets up (threads,
    ``inference_mode``), so that nothing but the model is timed. Called as ``runner()`` outside
    a window, a torch runner fixes its own thread count and ``inference_mode`` around it.
    ``x`` is the input (numpy float32, NCHW), ``threads`` the intra-op threads it runs on;
    ``info`` records what building it took (``export_s``, ``quantize_s``, ``session_s``,
    ``compile_s``, ...) and whether the export/quantised model/package came from the cache."""

    def __init__(self, backend: str, fn: Callable[[], object], x: np.ndarray, threads: int,
                 info: dict[str, Any]) -> None:
        self.backend = backend
        self.fn = fn
        self.x = x  # (B, 3, R, R) float32
        self.threads = threads
        self.info = info

    def __call__(self) -> object:
        if self.backend != "torch":  # an ONNX Runtime session carries its own thread count
            return self.fn()
        with torch_threads(self.threads), torch.inference_mode():
            return self.fn()

    def outputs(self) -> np.ndarray:
        """One call's logits as numpy (B, classes), whatever the backend."""
        y = self()
        if isinstance(y, torch.Tensor):
            return y.detach().float().numpy()
        return np.asarray(y[0])  # type: ignore[index]

    @property
    def setup_s(self) -> float:
        return sum(v for k, v in self.info.items() if k.endswith("_s"))


# --- spread and estimators ----------------------------------------------------------------------


def iqr(xs: Sequence[float]) -> float:
    """Interquartile range (inclusive quartiles); the range for fewer than 4 values."""
    if len(xs) < 4:
        return max(xs) - min(xs) if len(xs) else 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


# Three ways to turn paired rounds (candidate c_i, reference r_i) into one ratio. Chosen by
# measurement (bench/latency_stability.py prints all three on the same rounds).


def _median_of_ratios(c: np.ndarray, r: np.ndarray) -> float:
    return float(np.median(c / r))


def _ratio_of_minima(c: np.ndarray, r: np.ndarray) -> float:
    return float(np.min(c) / np.min(r))


def _ratio_of_medians(c: np.ndarray, r: np.ndarray) -> float:
    return float(np.median(c) / np.median(r))


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "median_of_ratios": _median_of_ratios,
    "ratio_of_minima": _ratio_of_minima,
    "ratio_of_medians": _ratio_of_medians,
}
ESTIMATOR = "median_of_ratios"  # ranked most stably on this machine (bench/latency_stability.py)


def estimate(c: Sequence[float], r: Sequence[float], estimator: str = ESTIMATOR) -> float:
    return ESTIMATORS[estimator](np.asarray(c, dtype=float), np.asarray(r, dtype=float))


def estimate_ci(c: Sequence[float], r: Sequence[float], estimator: str = ESTIMATOR,
                n_boot: int = 500) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the estimator, resampling whole rounds (pairs)."""
    ci = bootstrap_ci(ESTIMATORS[estimator], c, r, n_boot=n_boot)
    return (ci.lo, ci.hi)


def _quick_rel_halfwidth(c: list[float], r: list[float]) -> float:
    # The stopping rule runs every few rounds, so it uses the notch approximation of a median's
    # 95% interval (1.57 IQR / sqrt(n)) on the per-round ratios instead of a bootstrap.
    q = [a / b for a, b in zip(c, r)]
    return 1.57 * iqr(q) / len(q) ** 0.5 / statistics.median(q)


# --- the loop -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _pinned(threads: int, lock: bool) -> Iterator[None]:
    with timing_lock() if lock else contextlib.nullcontext(), torch_threads(threads), torch.inference_mode():
        yield


def _threads_of(runners: Sequence[Runner]) -> int:
    counts = {r.threads for r in runners}
    if len(counts) != 1:  # a ratio between two thread counts compares the machine, not models
        raise ValueError(f"time_rounds: runners on different thread counts {sorted(counts)}")
    return counts.pop()


def time_rounds(
    runners: Sequence[Runner], *, max_seconds: float = 1.0, target_rel_ci: float | None = TARGET_REL_CI,
    min_rounds: int = MIN_RUNS, max_rounds: int | None = None, reference: int = 0, lock: bool = False,
    on_round: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Time ``runners`` interleaved in rounds; per runner, per round, ms per forward.

    Runs on the runners' thread count (torch's restored afterwards), in ``inference_mode``,
    holding the timing lock when ``lock``. Warm-up: rounds until each runner's last two medians
    of 3 agree within ``SETTLE`` (at most 30% of the cap). Tiny models repeat inside their
    sample so that it lasts >= ``SAMPLE_S``. The order rotates every round, so no runner always
    follows the same one (cache state). Stops after ``min_rounds`` when every runner's ratio to
    ``runners[reference]`` has an approximate interval within ``target_rel_ci``, at
    ``max_rounds``, or at the cap ``max_seconds`` (warm-up included); ``target_rel_ci=None``
    times until the cap (a comparison of fixed length). With one runner (absolute timing) the
    rule is its IQR/median <= ``target_rel_ci``. ``on_round(i)`` is called before timed round i
    (benches and tests inject load with it).
    """
    if not runners:
        raise ValueError("time_rounds: no runners")
    threads = _threads_of(runners)
    with _pinned(threads, lock):
        return _rounds(runners, _CLOCKS[clock_for(threads)], max_seconds, target_rel_ci, min_rounds,
                       max_rounds, reference, on_round)


def _rounds(runners: Sequence[Runner], clock: Callable[[], float], max_seconds: float,
            target_rel_ci: float | None, min_rounds: int, max_rounds: int | None, reference: int,
            on_round: Callable[[int], None] | None) -> list[list[float]]:
    wall = time.perf_counter
    k = len(runners)
    start = wall()
    warm: list[list[float]] = [[] for _ in runners]
    while True:  # the first runs pay for allocation and kernel selection
        for i, r in enumerate(runners):
            run = r.fn
            t0 = clock()
            run()
            warm[i].append(clock() - t0)
        n = len(warm[0])
        if n >= 6 and all(
            abs(statistics.median(w[-6:-3]) - statistics.median(w[-3:])) <= SETTLE * max(w[-6:]) for w in warm
        ):
            break
        if wall() - start > 0.3 * max_seconds and n >= 2:
            break
    inner = [max(1, int(SAMPLE_S / max(min(w[-3:]), 1e-6))) for w in warm]
    runs: list[list[float]] = [[] for _ in runners]
    rnd = 0
    while True:
        if on_round is not None:
            on_round(rnd)
        for j in range(k):
            i = (j + rnd) % k
            run, m = runners[i].fn, inner[i]
            t0 = clock()
            for _ in range(m):
                run()
            runs[i].append((clock() - t0) / m * 1e3)
        rnd += 1
        if max_rounds is not None and rnd >= max_rounds:
            break
        if rnd >= min_rounds:
            if wall() - start > max_seconds:
                break
            if target_rel_ci is not None and (rnd % 5 == 0 or rnd == min_rounds) \
                    and _tight(runs, reference, target_rel_ci):
                break
        elif wall() - start > 4 * max_seconds and rnd >= 3:  # models far too slow for the cap
            break
    return runs


def _tight(runs: list[list[float]], reference: int, target_rel_ci: float) -> bool:
    if len(runs) == 1:
        return iqr(runs[0]) <= target_rel_ci * statistics.median(runs[0])
    return all(_quick_rel_halfwidth(runs[i], runs[reference]) <= target_rel_ci
               for i in range(len(runs)) if i != reference)
