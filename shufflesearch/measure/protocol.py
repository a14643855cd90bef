"""Measured latency you can trust on a shared, noisy machine: every model is timed side by side
with a fixed reference network, and the ratio is the figure.

The ShuffleNet V2 paper (Sec. 1-2) shows that FLOPs are not speed, so the search ranks candidates
by latency measured on the target. A machine shared with other tenants slows down and speeds up
in phases of seconds (memory bandwidth, frequency, neighbours), which no clock can subtract; what
stays stable is a comparison made in the same window (Chen & Revels, "Robust benchmarking in
noisy environments", 2016). So a measurement:

  * builds the inference form (BN folded, shuffle fused) in the target's memory format, and the
    reference network (``target.REFERENCE_ARCH``) the same way; ``eval()``, ``inference_mode``;
  * fixes the thread count (restored afterwards) and times with the thread's CPU clock at one
    thread, the wall clock otherwise (``env.clock_for``);
  * warms every model up in rounds until consecutive timings settle;
  * times them in rounds, one forward (or a few, for tiny models) of each per round, in a
    rotating order, on the same input, in the same thread, until the interval of every
    candidate's ratio is tight or the time cap is hit;
  * estimates candidate / reference from the paired rounds (``ESTIMATOR``, chosen by
    bench/latency_stability.py) with a bootstrap interval; the reported latency is ratio x the
    reference's absolute figure from the reference schedule (the median of its recent timings);
  * holds an exclusive cross-process lock meanwhile (proxies and training hold it shared);
  * carries the environment fingerprint and is cached under (archid, spec, timing version,
    fingerprint), where the timing version covers the inference form's code, this protocol and
    the reference.

Backends plug in as zero-argument callables that run one forward pass (``Runner``). Every
backend is timed here, in this thread, by the same rounds: the torch inference form directly,
ONNX Runtime (fp32 and int8) through ``backends.make_runner``/``make_module_runner`` against the
reference exported for the same backend. ORT sessions run without spinning, and with one
intra-op thread every kernel runs on the calling thread, so the thread-CPU clock times them as
it times torch (a child process is not needed; bench/backends.py times them side by side).
int8 needs calibration images, which the caller passes (the proxy task's training split).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.stats import bootstrap_ci
from ..common.threads import torch_threads
from ..errors import UserError
from ..model.arch import Arch, preset, resolve_arch
from ..model.compile import build
from . import backends
from .cache import LatencyCache
from .env import clock_for, fingerprint, timing_lock
from .target import PROTOCOL_VERSION, REFERENCE_ARCH, Latency, TargetSpec

Runner = Callable[[], Any]  # one forward pass of one model on its fixed input

MIN_RUNS = 10  # fewest timed rounds an estimate is taken from
SETTLE = 0.05  # warm-up ends when two consecutive medians of 3 agree within 5%
TARGET_REL_CI = 0.01  # stop when every ratio's interval half-width is within 1% of it
DRIFT_BOUND = 0.10  # a window whose reference ran >10% off its scheduled figure is drifted
REFERENCE_WINDOW = 200  # the reference figure: the median of its last 200 timings (usual speed)
REFERENCE_SEED = 5  # timings a fresh schedule is seeded with (drift.DriftMonitor.seed)

_CLOCKS = {"wall": time.perf_counter, "thread_cpu": time.thread_time}


def _iqr(xs: Sequence[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs) if len(xs) else 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


# --- estimators -------------------------------------------------------------------------------------
# Three ways to turn paired rounds (candidate c_i, reference r_i) into one ratio. Chosen by
# measurement (bench/latency_stability.py prints all three on the same rounds; README, Latency).


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
ESTIMATOR = "median_of_ratios"  # ranked most stably on this machine (README, Latency)


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
    return 1.57 * _iqr(q) / len(q) ** 0.5 / statistics.median(q)


# --- timing rounds ----------------------------------------------------------------------------------


def time_rounds(
    runners: Sequence[Runner], *, clock_name: str = "wall", max_seconds: float = 1.0,
    target_rel_ci: float = TARGET_REL_CI, min_rounds: int = MIN_RUNS, max_rounds: int | None = None,
    reference: int = 0, on_round: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Time ``runners`` interleaved in rounds; per runner, per round, ms per forward.

    Warm-up: rounds until each runner's last two medians of 3 agree within ``SETTLE`` (at most
    30% of the cap). Tiny models repeat inside their sample so that it lasts >= ~2 ms. The order
    rotates every round, so no runner always follows the same one (cache state). Stops after
    ``min_rounds`` when every runner's ratio to ``runners[reference]`` has an approximate
    interval within ``target_rel_ci``, at ``max_rounds``, or at the cap ``max_seconds``.
    ``on_round(i)`` is called before timed round i (benches and tests inject load with it).
    With one runner (absolute timing, protocol 1) the rule is its IQR/median <= ``target_rel_ci``.
    """
    if not runners:
        raise ValueError("time_rounds: no runners")
    wall, clock = time.perf_counter, _CLOCKS[clock_name]
    k = len(runners)
    start = wall()
    warm: list[list[float]] = [[] for _ in runners]
    while True:  # the first runs pay for allocation and kernel selection
        for i, run in enumerate(runners):
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
    inner = [max(1, int(0.002 / max(min(w[-3:]), 1e-6))) for w in warm]
    runs: list[list[float]] = [[] for _ in runners]
    rnd = 0
    while True:
        if on_round is not None:
            on_round(rnd)
        for j in range(k):
            i = (j + rnd) % k
            run, m = runners[i], inner[i]
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
            if rnd % 5 == 0 or rnd == min_rounds:
                if k == 1:
                    tight = _iqr(runs[0]) <= target_rel_ci * statistics.median(runs[0])
                else:
                    tight = all(_quick_rel_halfwidth(runs[i], runs[reference]) <= target_rel_ci
                                for i in range(k) if i != reference)
                if tight:
                    break
        elif wall() - start > 4 * max_seconds and rnd >= 3:  # models far too slow for the cap
            break
    return runs


# --- torch runners ----------------------------------------------------------------------------------


def torch_runner(model: nn.Module, x: torch.Tensor) -> Runner:
    """A zero-arg forward of ``model`` on ``x`` (call inside ``inference_mode``)."""
    model = model.eval()
    return lambda: model(x)


@contextlib.contextmanager
def _timing_context(threads: int, lock: bool):
    ctx = timing_lock() if lock else contextlib.nullcontext()
    with ctx, torch_threads(threads), torch.inference_mode():
        yield


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    threads: int = 1,
    channels_last: bool = False,
    max_seconds: float = 1.0,
    target_rel_iqr: float = 0.03,
    lock: bool = True,
) -> Latency:
    """Absolute timing of one model alone (protocol 1): the median of its runs. Kept for the
    per-unit table of the predictor, and for timing anything that has no reference."""
    if threads < 1:
        raise UserError(f"threads: must be >= 1, got {threads}")
    model = model.eval()
    x = torch.randn(*input_shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with _timing_context(threads, lock):
        runs = time_rounds([torch_runner(model, x)], clock_name=clock_for(threads), max_seconds=max_seconds,
                           target_rel_ci=target_rel_iqr)
    runs_ms = runs[0]
    spec = {"resolution": input_shape[-1], "batch": input_shape[0], "threads": threads,
            "channels_last": channels_last, "backend": "torch"}
    return Latency(median_ms=statistics.median(runs_ms), iqr_ms=_iqr(runs_ms), n=len(runs_ms),
                   runs_ms=[round(r, 5) for r in runs_ms], fingerprint=fingerprint(threads, "torch"), spec=spec)


# --- the reference ----------------------------------------------------------------------------------

_REF_MODELS: dict[tuple[str, bool], nn.Module] = {}


def inference_model(arch: Arch, spec: TargetSpec) -> nn.Module:
    """The network timed for ``arch`` on ``spec``: its inference form in the target's memory
    format (``target.channels_last``), exactly what is exported for that target."""
    return build(arch, inference=True, channels_last=spec.channels_last)


def reference_model(spec: TargetSpec) -> nn.Module:
    key = (REFERENCE_ARCH, spec.channels_last)
    if key not in _REF_MODELS:  # built once per process: every measurement uses it
        torch.manual_seed(0)
        _REF_MODELS[key] = inference_model(preset(REFERENCE_ARCH), spec)
    return _REF_MODELS[key]


def reference_archid() -> str:
    return preset(REFERENCE_ARCH).archid


class ReferenceSchedule:
    """The reference network's absolute figure: the median of its last ``REFERENCE_WINDOW``
    timings on this spec and machine (every measurement window adds its own, the drift monitor
    adds dedicated ones on its schedule). With a cache the log is shared by every process, so
    separate runs and CLI calls scale their ratios by the same slowly moving figure."""

    def __init__(self, spec: TargetSpec, cache: LatencyCache | None = None, window: int = REFERENCE_WINDOW) -> None:
        self.spec, self.cache, self.window = spec, cache, window
        self.fp = fingerprint(spec.threads, spec.backend)
        self.local: list[float] = []  # this process's entries when there is no cache

    def history(self) -> list[float]:
        if self.cache is not None:
            return self.cache.reference_history(self.spec, self.fp, self.window)
        return self.local[-self.window:]

    def add(self, ms: float) -> None:
        if self.cache is not None:
            self.cache.log_reference(self.spec, self.fp, ms)
        else:
            self.local.append(ms)

    def figure(self) -> dict[str, Any] | None:
        """{"ms", "spread" (IQR/median of the entries), "n"}, or None before the first entry."""
        h = self.history()
        if not h:
            return None
        med = statistics.median(h)
        return {"ms": med, "spread": _iqr(h) / med if med > 0 else float("nan"), "n": len(h)}


# --- relative measurements --------------------------------------------------------------------------


def relative_latency(c_runs: Sequence[float], r_runs: Sequence[float], *, reference_ms: float,
                     reference: dict[str, Any], fp: dict, spec: dict,
                     estimator: str = ESTIMATOR) -> Latency:
    """The figure for one candidate from its paired rounds with the reference."""
    c, r = np.asarray(c_runs, float), np.asarray(r_runs, float)
    ratio = estimate(c, r, estimator)
    lo, hi = estimate_ci(c, r, estimator)
    q = c / r
    return Latency(
        median_ms=ratio * reference_ms, iqr_ms=_iqr(list(q)) * reference_ms, n=len(c),
        runs_ms=[round(float(v), 5) for v in c], fingerprint=fp, spec=spec,
        ratio=ratio, ratio_ci=[lo, hi], estimator=estimator, abs_ms=float(np.median(c)),
        reference={**reference, "ms": reference_ms}, ref_runs_ms=[round(float(v), 5) for v in r],
        protocol=PROTOCOL_VERSION,
    )


def _torch_window(models: list[nn.Module], spec: TargetSpec, *, max_seconds: float,
                  lock: bool, on_round: Callable[[int], None] | None = None,
                  max_rounds: int | None = None) -> list[list[float]]:
    """Rounds of [reference, *models] on one input, torch backend, this thread."""
    torch.manual_seed(0)
    x = torch.randn(*spec.input_shape)
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = reference_model(spec)
    with _timing_context(spec.threads, lock):
        return time_rounds([torch_runner(m, x) for m in (ref, *models)], clock_name=clock_for(spec.threads),
                           max_seconds=max_seconds, on_round=on_round, max_rounds=max_rounds)


Candidate = Any  # an nn.Module (built inference form) or an Arch (ONNX backends: export cached)

_REF_RUNNERS: dict[tuple[str, str | None], backends.Runner] = {}


def reference_runner(spec: TargetSpec, calibration: Any = None) -> backends.Runner:
    """The reference on a non-torch backend (session built once per spec and calibration)."""
    if spec.backend == "onnxruntime-int8" and calibration is not None:
        calibration = backends.calibration_array(calibration)
    key = (spec.key(), None if calibration is None else backends.calibration_fingerprint(calibration))
    if key not in _REF_RUNNERS:
        _REF_RUNNERS[key] = backends.make_runner(preset(REFERENCE_ARCH), spec, calibration=calibration)
    return _REF_RUNNERS[key]


def backend_runner(c: Candidate, spec: TargetSpec, calibration: Any = None) -> backends.Runner:
    """A non-torch runner of one candidate: an Arch by ``make_runner`` (its export cached by
    archid), a module by ``make_module_runner`` (exported afresh)."""
    if isinstance(c, nn.Module):
        return backends.make_module_runner(c, spec.input_shape, spec, calibration=calibration)
    return backends.make_runner(c, spec, calibration=calibration)


def _window(models: Sequence[Candidate], spec: TargetSpec, *, max_seconds: float, lock: bool,
            calibration: Any = None) -> list[list[float]]:
    """Rounds of [reference, *models] on ``spec.backend``, in this thread. Building the ONNX
    runners (export, quantisation, session) happens before the lock and the rounds."""
    if spec.backend == "torch":
        mods = [m if isinstance(m, nn.Module) else inference_model(m, spec) for m in models]
        return _torch_window(mods, spec, max_seconds=max_seconds, lock=lock)
    runners = [reference_runner(spec, calibration)] + [backend_runner(m, spec, calibration) for m in models]
    with timing_lock() if lock else contextlib.nullcontext():
        return time_rounds(runners, clock_name=clock_for(spec.threads), max_seconds=max_seconds)


def window_latencies(rounds: list[list[float]], spec: TargetSpec, *,
                     schedule: ReferenceSchedule | None = None, reference_ms: float | None = None,
                     estimator: str = ESTIMATOR) -> list[Latency]:
    """Figures for rounds[1:] against the reference rounds[0]. The reference's absolute figure
    is ``reference_ms`` if given, else the schedule's (this window's median is added to it
    first), else this window's own median."""
    ref_runs = rounds[0]
    window_ms = statistics.median(ref_runs)
    info: dict[str, Any] = {"arch": REFERENCE_ARCH, "archid": reference_archid(), "window_ms": window_ms}
    if reference_ms is not None:
        info.update(spread=None, n=None)
    elif schedule is not None:
        schedule.add(window_ms)
        fig = schedule.figure() or {"ms": window_ms, "spread": None, "n": 1}
        reference_ms = fig["ms"]
        info.update(spread=fig["spread"], n=fig["n"])
    else:
        reference_ms = window_ms
        info.update(spread=_iqr(ref_runs) / window_ms, n=1)
    fp = fingerprint(spec.threads, spec.backend)
    return [relative_latency(c, ref_runs, reference_ms=reference_ms, reference=info, fp=fp,
                             spec=spec.to_dict(), estimator=estimator) for c in rounds[1:]]


def measure_model(model: Candidate, spec: TargetSpec, *, max_seconds: float = 1.0,
                  target_rel_iqr: float = 0.03, lock: bool = True,
                  schedule: ReferenceSchedule | None = None, calibration: Any = None) -> Latency:
    """Time an already-built inference-form model (or an Arch) against the reference on
    ``spec``; ``calibration`` images are required by ``onnxruntime-int8``.
    (``target_rel_iqr`` is kept for callers of protocol 1; the stopping rule is TARGET_REL_CI.)"""
    del target_rel_iqr
    rounds = _window([model], spec, max_seconds=max_seconds, lock=lock, calibration=calibration)
    return window_latencies(rounds, spec, schedule=schedule)[0]


def _drift(lat: Latency, before: dict[str, Any] | None, bound: float) -> None:
    """Speed factor of this window: the reference's time here vs its scheduled figure before
    this window was added (no verdict while the schedule has fewer than 3 entries)."""
    if before is None or before["n"] < 3:
        lat.speed_factor, lat.drifted = None, False
        return
    f = lat.reference["window_ms"] / before["ms"]  # type: ignore[index]
    lat.speed_factor, lat.drifted = round(f, 4), abs(f - 1) > bound


def measure_arch(
    arch: Arch, spec: TargetSpec, *, cache: LatencyCache | None = None,
    remeasure: bool = False, max_seconds: float = 1.0, schedule: ReferenceSchedule | None = None,
    bound: float = DRIFT_BOUND, retime_drifted: bool = True, calibration: Any = None,
) -> Latency:
    """Latency of ``arch`` on ``spec`` relative to the reference; served from ``cache`` when the
    same (archid, spec, timing version, fingerprint) was measured before, unless ``remeasure``.
    A window whose reference ran beyond ``bound`` off its scheduled figure is re-timed once; a
    figure still drifted keeps ``drifted=True`` and is not cached. ``onnxruntime-int8`` needs
    ``calibration`` images (not in the cache key: int8 timing depends on the graph's structure)."""
    fp = fingerprint(spec.threads, spec.backend)
    claim = cache.claimed(arch.archid, spec, fp) if cache is not None and not remeasure else contextlib.nullcontext()
    with claim as hit:  # cached, or timed meanwhile by another study sharing the cache
        if hit is not None:
            return hit
        started = time.time()
        schedule = schedule or ReferenceSchedule(spec, cache)
        model = inference_model(arch, spec) if spec.backend == "torch" else arch
        lat = _measure_scheduled(model, spec, schedule, max_seconds, bound, calibration)
        if lat.drifted and retime_drifted:
            lat = _measure_scheduled(model, spec, schedule, max_seconds, bound, calibration)
        if cache is not None and not lat.drifted:
            cache.put(arch.archid, spec, lat, measured_at=started)
    return lat


def _measure_scheduled(model: Candidate, spec: TargetSpec, schedule: ReferenceSchedule,
                       max_seconds: float, bound: float, calibration: Any = None) -> Latency:
    before = schedule.figure()
    lat = measure_model(model, spec, max_seconds=max_seconds, schedule=schedule, calibration=calibration)
    _drift(lat, before, bound)
    return lat


def retime(archs: Sequence[Any], spec: TargetSpec, *, max_seconds: float | None = None,
           schedule: ReferenceSchedule | None = None, reference_ms: float | None = None,
           calibration: Any = None) -> list[Latency]:
    """Re-time a set of architectures side by side: all of them and the reference interleaved
    in one window, so their ratios (and ms, scaled by one reference figure) are comparable
    without any phase of the machine between them. Not cached (the window is the point).
    ``max_seconds`` caps the window (default: 1 s per model, the reference included);
    ``calibration`` images are required by ``onnxruntime-int8``."""
    if not archs:
        return []
    archs = [resolve_arch(a) for a in archs]  # Arch, preset name or arch file
    distinct = list({a.archid: a for a in archs}.values())  # timed once each, repeats share it
    models = [inference_model(a, spec) if spec.backend == "torch" else a for a in distinct]
    rounds = _window(models, spec, max_seconds=max_seconds if max_seconds is not None else float(len(models) + 1), lock=True, calibration=calibration)
    at = dict(zip((a.archid for a in distinct), window_latencies(rounds, spec, schedule=schedule, reference_ms=reference_ms)))
    return [copy.deepcopy(at[a.archid]) for a in archs]
