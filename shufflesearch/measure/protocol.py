"""Measured latency you can trust: the protocol, the environment fingerprint, the lock, the cache
and the drift monitor.

The ShuffleNet V2 paper (Sec. 1-2) shows that FLOPs are not speed, so the search ranks candidates
by latency measured on the target. On a shared, noisy 2-core machine a figure is only worth
something if it is taken the same way every time:

  * the inference form (BN folded, shuffle fused), ``eval()`` and ``inference_mode``;
  * a fixed torch thread count (restored afterwards);
  * warm-up until consecutive timings settle (allocator, oneDNN primitive caches);
  * repeats until IQR/median falls below a target or the time cap runs out; the median is
    reported, with its IQR and the number of runs;
  * nothing else heavy from this project on the machine meanwhile: timing holds an exclusive
    cross-process lock, proxy computation and training hold it shared (``compute_lock``);
  * every figure carries the environment fingerprint (CPU, cores, torch, threads, backend) and
    is cached under (archid, target spec, fingerprint).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .cache import LatencyCache
from .env import clock_for, fingerprint, timing_lock
from .target import Latency, TargetSpec

# --- the protocol -----------------------------------------------------------------------------


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs) if xs else 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


MIN_RUNS = 10  # fewest timed runs a median is taken from
SETTLE = 0.05  # warm-up ends when two consecutive medians of 3 agree within 5%


_CLOCKS = {"wall": time.perf_counter, "thread_cpu": time.thread_time}


def _time_runs(
    run: Any, *, max_seconds: float, target_rel_iqr: float, min_runs: int = MIN_RUNS,
    clock_name: str = "wall",
) -> tuple[list[float], int]:
    """Warm up, then time ``run()`` until the spread is small or the cap is hit.

    Returns per-forward times in ms and the number of forwards per timed sample (tiny models
    are repeated inside a sample so that each sample lasts >= ~2 ms and timer jitter fades).
    """
    wall, clock = time.perf_counter, _CLOCKS[clock_name]
    start = wall()
    warm_cap = 0.3 * max_seconds
    warm: list[float] = []
    while True:  # warm-up: the first runs pay for allocation and kernel selection
        t0 = clock()
        run()
        warm.append(clock() - t0)
        if len(warm) >= 6:
            a, b = statistics.median(warm[-6:-3]), statistics.median(warm[-3:])
            if abs(a - b) <= SETTLE * max(a, b):
                break
        if wall() - start > warm_cap and len(warm) >= 2:
            break
    per_run = min(warm[-3:])
    inner = max(1, int(0.002 / max(per_run, 1e-6)))
    runs: list[float] = []
    while True:
        t0 = clock()
        for _ in range(inner):
            run()
        runs.append((clock() - t0) / inner * 1e3)
        if len(runs) >= min_runs:
            med = statistics.median(runs)
            if _iqr(runs) <= target_rel_iqr * med or wall() - start > max_seconds:
                break
        elif wall() - start > 4 * max_seconds:  # a model far too slow for the cap: stop
            if len(runs) >= 3:
                break
    return runs, inner


def measure(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    *,
    threads: int = 1,
    channels_last: bool = False,
    max_seconds: float = 1.0,
    target_rel_iqr: float = 0.03,
    lock: bool = True,
) -> Latency:
    """Time ``model`` on a random input of ``input_shape`` with the protocol above (torch)."""
    if threads < 1:
        raise UserError(f"threads: must be >= 1, got {threads}")
    model = model.eval()
    x = torch.randn(*input_shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    old_threads = torch.get_num_threads()
    ctx = timing_lock() if lock else contextlib.nullcontext()
    with ctx:
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                runs, _ = _time_runs(
                    lambda: model(x), max_seconds=max_seconds, target_rel_iqr=target_rel_iqr,
                    clock_name=clock_for(threads),
                )
        finally:
            torch.set_num_threads(old_threads)
    spec = {
        "resolution": input_shape[2], "batch": input_shape[0], "threads": threads,
        "channels_last": channels_last, "backend": "torch",
    }
    return _result(runs, fingerprint(threads, "torch"), spec)


def _result(runs: list[float], fp: dict, spec: dict) -> Latency:
    return Latency(
        median_ms=statistics.median(runs), iqr_ms=_iqr(runs), n=len(runs),
        runs_ms=[round(r, 5) for r in runs], fingerprint=fp, spec=spec,
    )


# --- ONNX Runtime backend (own process) --------------------------------------------------------
# ORT's worker threads spin while idle and slow later PyTorch work in the same process, so ORT
# runs in a child process with spinning off; the lock is held by the parent around it.


def _ort_child(path: str, shape: list[int], threads: int, max_seconds: float, target: float) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    runs, _ = _time_runs(lambda: sess.run(None, {name: x}), max_seconds=max_seconds, target_rel_iqr=target,
                         clock_name=clock_for(threads))
    print(json.dumps({"runs_ms": runs, "onnxruntime": ort.__version__}))


def measure_onnxruntime(
    model: nn.Module, input_shape: tuple[int, int, int, int], *, threads: int = 1,
    max_seconds: float = 1.0, target_rel_iqr: float = 0.03, lock: bool = True,
) -> Latency:
    """Export ``model`` to ONNX and time it with ONNX Runtime in a child process."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("target.backend: onnxruntime is not installed (pip install 'shufflesearch[onnx]')") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation/tracer notes
            torch.onnx.export(model.eval(), (torch.randn(*input_shape),), path, dynamo=False,
                              input_names=["x"], output_names=["y"])
        code = (
            "import sys, json; from shufflesearch.measure.protocol import _ort_child; "
            "_ort_child(*json.loads(sys.argv[1]))"
        )
        argv = json.dumps([path, list(input_shape), threads, max_seconds, target_rel_iqr])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        ctx = timing_lock() if lock else contextlib.nullcontext()
        with ctx:
            proc = subprocess.run([sys.executable, "-c", code, argv], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"onnxruntime timing failed: {last}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    spec = {
        "resolution": input_shape[2], "batch": input_shape[0], "threads": threads,
        "channels_last": False, "backend": "onnxruntime",
    }
    return _result(out["runs_ms"], fingerprint(threads, "onnxruntime"), spec)


# --- one architecture on one target ---------------------------------------------------------------


def measure_model(model: nn.Module, spec: TargetSpec, *, max_seconds: float = 1.0,
                  target_rel_iqr: float = 0.03, lock: bool = True) -> Latency:
    """Time an already-built inference-form model on ``spec`` with its backend."""
    if spec.backend == "onnxruntime-int8":  # needs calibration images: measure/backends.py
        raise UserError("target.backend: onnxruntime-int8 is not timed by this protocol yet (use torch or onnxruntime)")
    if spec.backend == "onnxruntime":
        return measure_onnxruntime(model, spec.input_shape, threads=spec.threads,
                                   max_seconds=max_seconds, target_rel_iqr=target_rel_iqr, lock=lock)
    lat = measure(model, spec.input_shape, threads=spec.threads, channels_last=spec.channels_last,
                  max_seconds=max_seconds, target_rel_iqr=target_rel_iqr, lock=lock)
    lat.spec = spec.to_dict()
    return lat


def measure_arch(
    arch: Any, spec: TargetSpec, *, cache: LatencyCache | None = None,
    remeasure: bool = False, max_seconds: float = 1.0,
) -> Latency:
    """Latency of ``build(arch, inference=True)`` on ``spec``; served from ``cache`` when the
    same (archid, spec, fingerprint) was measured before, unless ``remeasure``."""
    from ..model.arch import resolve_arch
    from ..model.compile import build

    arch = resolve_arch(arch)
    fp = fingerprint(spec.threads, spec.backend)
    if cache is not None and not remeasure:
        hit = cache.get(arch.archid, spec, fp)
        if hit is not None:
            return hit
    lat = measure_model(build(arch, inference=True), spec, max_seconds=max_seconds)
    lat.fingerprint = fp
    if cache is not None:
        cache.put(arch.archid, spec, lat)
    return lat


