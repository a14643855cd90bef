"""Measured latency you can trust on a shared, noisy machine: every model is timed side by side
with a fixed reference network, and the ratio is the figure.

The ShuffleNet V2 paper (Sec. 1-2) shows that FLOPs are not speed, so the search ranks candidates
by latency measured on the target. A machine shared with other tenants slows down and speeds up
in phases of seconds (memory bandwidth, frequency, neighbours), which no clock can subtract; what
stays stable is a comparison made in the same window (Chen & Revels, "Robust benchmarking in
noisy environments", 2016). So a measurement:

  * builds the inference form (BN folded, shuffle fused) in the target's memory format, and the
    reference network (``target.REFERENCE_ARCH``) the same way; ``eval()``, ``inference_mode``;
  * times them side by side in one window of the one timing loop (``timing.time_rounds``: fixed
    threads, the thread's CPU clock at one thread, warm-up until timings settle, rounds in a
    rotating order on one input in one thread, until the interval of every candidate's ratio is
    tight or the time cap is hit);
  * estimates candidate / reference from the paired rounds (``timing.ESTIMATOR``, chosen by
    bench/latency_stability.py) with a bootstrap interval; the reported latency is ratio x the
    reference's absolute figure from the reference schedule (the median of its recent timings);
  * holds an exclusive cross-process lock meanwhile (proxies and training hold it shared);
  * carries the environment fingerprint and is cached under (archid, spec, timing version,
    fingerprint), where the timing version covers the inference form's code, this protocol and
    the reference.

Backends plug in as ``timing.Runner``s, zero-argument callables that run one forward pass,
built by ``backends.make_runner``/``make_module_runner``; every backend is timed by the same
rounds, in this thread, against the reference built for the same backend. ORT sessions run
without spinning, and with one intra-op thread every kernel runs on the calling thread, so the
thread-CPU clock times them as it times torch (a child process is not needed;
bench/backends.py times them side by side).
int8 needs calibration images, which the caller passes (``backends.calibration_images``).
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

from ..errors import UserError
from ..model.arch import Arch, preset, resolve_arch
from ..model.compile import build
from . import backends
from .cache import LatencyCache
from .env import fingerprint
from .target import PROTOCOL_VERSION, REFERENCE_ARCH, Latency, TargetSpec
from .timing import ESTIMATOR, TARGET_REL_CI, Runner, estimate, estimate_ci, iqr, time_rounds

DRIFT_BOUND = 0.10  # a window whose reference ran >10% off its scheduled figure is drifted
REFERENCE_WINDOW = 200  # the reference figure: the median of its last 200 timings (usual speed)
REFERENCE_SEED = 5  # timings a fresh schedule is seeded with (drift.DriftMonitor.seed)


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
    runs_ms = time_rounds([backends.torch_runner(model, x, threads)], max_seconds=max_seconds,
                          target_rel_ci=target_rel_iqr, lock=lock)[0]
    spec = {"resolution": input_shape[-1], "batch": input_shape[0], "threads": threads,
            "channels_last": channels_last, "backend": "torch"}
    return Latency(median_ms=statistics.median(runs_ms), iqr_ms=iqr(runs_ms), n=len(runs_ms),
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
        return {"ms": med, "spread": iqr(h) / med if med > 0 else float("nan"), "n": len(h)}


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
        median_ms=ratio * reference_ms, iqr_ms=iqr(list(q)) * reference_ms, n=len(c),
        runs_ms=[round(float(v), 5) for v in c], fingerprint=fp, spec=spec,
        ratio=ratio, ratio_ci=[lo, hi], estimator=estimator, abs_ms=float(np.median(c)),
        reference={**reference, "ms": reference_ms}, ref_runs_ms=[round(float(v), 5) for v in r],
        protocol=PROTOCOL_VERSION,
    )


Candidate = Any  # an nn.Module (a built inference form) or an Arch

_REF_RUNNERS: dict[tuple[str, str | None], Runner] = {}


def candidate_runner(c: Candidate, spec: TargetSpec, calibration: Any = None) -> Runner:
    """The runner of one candidate on ``spec.backend``: a module as it is (torch) or exported
    afresh (ONNX); an Arch as its inference form (torch: ``inference_model``; ONNX: the export
    cached by archid)."""
    if isinstance(c, nn.Module):
        return backends.make_module_runner(c, spec.input_shape, spec, calibration=calibration)
    if spec.backend == "torch":
        return backends.make_module_runner(inference_model(c, spec), spec.input_shape, spec)
    return backends.make_runner(c, spec, calibration=calibration)


def reference_runner(spec: TargetSpec, calibration: Any = None) -> Runner:
    """The reference on ``spec`` (built once per spec and, for int8, calibration images)."""
    fp = None
    if spec.backend == "onnxruntime-int8" and calibration is not None:
        calibration = backends.calibration_array(calibration)
        fp = backends.calibration_fingerprint(calibration)
    key = (spec.key(), fp)
    if key not in _REF_RUNNERS:
        ref = reference_model(spec) if spec.backend == "torch" else preset(REFERENCE_ARCH)
        _REF_RUNNERS[key] = candidate_runner(ref, spec, calibration)
    return _REF_RUNNERS[key]


def window(models: Sequence[Candidate], spec: TargetSpec, *, max_seconds: float, lock: bool,
           calibration: Any = None, target_rel_ci: float = TARGET_REL_CI,
           on_round: Callable[[int], None] | None = None,
           max_rounds: int | None = None) -> list[list[float]]:
    """Rounds of [reference, *models] on ``spec.backend``, in this thread, in one run of the
    timing loop. Building the runners (for ONNX: export, quantisation, session) happens before
    the lock and the rounds. With no models it times the reference alone."""
    runners = [reference_runner(spec, calibration)] + [candidate_runner(m, spec, calibration) for m in models]
    return time_rounds(runners, max_seconds=max_seconds, target_rel_ci=target_rel_ci, lock=lock,
                       on_round=on_round, max_rounds=max_rounds)


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
        info.update(spread=iqr(ref_runs) / window_ms, n=1)
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
    rounds = window([model], spec, max_seconds=max_seconds, lock=lock, calibration=calibration)
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
    rounds = window(models, spec, max_seconds=max_seconds if max_seconds is not None else float(len(models) + 1), lock=True, calibration=calibration)
    at = dict(zip((a.archid for a in distinct), window_latencies(rounds, spec, schedule=schedule, reference_ms=reference_ms)))
    return [copy.deepcopy(at[a.archid]) for a in archs]
