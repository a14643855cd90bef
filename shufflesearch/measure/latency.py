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
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError

BACKENDS = ("torch", "onnxruntime")
REFERENCE_ARCH = "shufflenet_v2_x0_5"  # the drift monitor's fixed yardstick


# --- the target ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """What the deployed model runs as; latency is measured on exactly this."""

    resolution: int = 224  # square input side in pixels
    batch: int = 1  # images per forward pass
    threads: int = 1  # intra-op threads (torch.set_num_threads / ORT intra_op_num_threads)
    channels_last: bool = False  # NHWC memory format for input and weights
    backend: str = "torch"  # "torch" (inference form) or "onnxruntime" (own process)

    def __post_init__(self) -> None:
        for name in ("resolution", "batch", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"target.{name}: must be an integer >= 1, got {v!r}")
        if self.backend not in BACKENDS:
            raise UserError(f"target.backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        return _hash(self.to_dict())

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.resolution, self.resolution)


@dataclass
class Latency:
    """One measured figure: per-forward median and IQR in ms over ``n`` timed runs."""

    median_ms: float
    iqr_ms: float
    n: int
    runs_ms: list[float]
    fingerprint: dict
    spec: dict
    cached: bool = False
    speed_factor: float | None = None  # machine speed vs the drift baseline when measured
    drifted: bool = False  # the speed factor lay beyond the drift monitor's bound

    @property
    def rel_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latency:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --- environment ----------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use, not what exists
    except AttributeError:
        return os.cpu_count() or 1


def fingerprint(threads: int = 1, backend: str = "torch") -> dict:
    """The environment a figure was taken in; a figure from another fingerprint is not reused."""
    fp = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": _cores(),
        "torch": torch.__version__,
        "threads": threads,
        "backend": backend,
        "clock": clock_for(threads),  # a CPU-time figure and a wall-time one are not comparable
    }
    if backend == "onnxruntime":
        try:
            import onnxruntime

            fp["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            fp["onnxruntime"] = None
    return fp


def fingerprint_id(fp: dict) -> str:
    return _hash(fp)


def cache_dir() -> Path:
    env = os.environ.get("SHUFFLESEARCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "shufflesearch"


def lock_path() -> Path:
    env = os.environ.get("SHUFFLESEARCH_LOCK")
    return Path(env) if env else cache_dir() / "timing.lock"


# --- the lock ---------------------------------------------------------------------------------
# flock locks belong to an open file, so a second open() in the same process would deadlock
# against the first. One fd per process, a mode and a depth make the locks re-entrant: a
# timing inside a compute section drops the shared lock, takes the exclusive one, then goes back.

_state_guard = threading.Lock()
_proc: dict[str, Any] = {"pid": None, "fd": None, "mode": None, "depth": 0}


def _flock(mode: int | None) -> None:
    if _proc["pid"] != os.getpid():  # forked child: the parent's fd state is not ours
        _proc.update(pid=os.getpid(), fd=None, mode=None, depth=0)
    if mode is None:
        if _proc["fd"] is not None:
            fcntl.flock(_proc["fd"], fcntl.LOCK_UN)
            os.close(_proc["fd"])
        _proc.update(fd=None, mode=None)
        return
    if _proc["fd"] is None:
        p = lock_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        _proc["fd"] = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    elif _proc["mode"] is not None:  # change of mode: release first (flock's own conversion
        fcntl.flock(_proc["fd"], fcntl.LOCK_UN)  # is not atomic either, this is explicit)
    fcntl.flock(_proc["fd"], mode)
    _proc["mode"] = mode


@contextlib.contextmanager
def _held(mode: int) -> Iterator[None]:
    with _state_guard:
        if _proc["pid"] != os.getpid():
            _proc.update(pid=os.getpid(), fd=None, mode=None, depth=0)
        prev = _proc["mode"]
        # Exclusive already covers shared; otherwise (re)acquire in the wanted mode.
        need = not (prev == fcntl.LOCK_EX or prev == mode)
        if need:
            _flock(mode)
        _proc["depth"] += 1
    try:
        yield
    finally:
        with _state_guard:
            _proc["depth"] -= 1
            if need:
                _flock(prev)


def timing_lock() -> contextlib.AbstractContextManager[None]:
    """Exclusive across processes: no other timing and no compute_lock holder meanwhile."""
    return _held(fcntl.LOCK_EX)


def compute_lock() -> contextlib.AbstractContextManager[None]:
    """Shared across processes: proxies and training hold it so they never overlap a timing."""
    return _held(fcntl.LOCK_SH)


# --- the protocol -----------------------------------------------------------------------------


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs) if xs else 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


MIN_RUNS = 10  # fewest timed runs a median is taken from
SETTLE = 0.05  # warm-up ends when two consecutive medians of 3 agree within 5%


def clock_for(threads: int) -> str:
    """Which clock times a run. With one thread every op runs inline on the calling thread, so
    its CPU time is the run's latency on an otherwise idle core; unlike wall time it does not
    count the slices the scheduler gives to other processes on a shared machine. With more
    threads the wall clock is the only honest one. ``SHUFFLESEARCH_CLOCK=wall`` forces wall."""
    if os.environ.get("SHUFFLESEARCH_CLOCK") == "wall" or threads != 1:
        return "wall"
    return "thread_cpu"


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
            "import sys, json; from shufflesearch.measure.latency import _ort_child; "
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


# --- the cache ----------------------------------------------------------------------------------


class LatencyCache:
    """Measured figures keyed by (archid, spec.key(), fingerprint_id); one SQLite file shared by
    every worker (WAL mode and a busy timeout make concurrent writers wait, not fail)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "latency.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS latency (archid TEXT, spec_key TEXT, fp_id TEXT,"
                " record TEXT NOT NULL, created REAL, PRIMARY KEY (archid, spec_key, fp_id))"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=60)
        except sqlite3.Error as e:
            raise UserError(f"{self.path}: cannot open the latency cache ({e})") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    def get(self, archid: str, spec: TargetSpec, fp: dict) -> Latency | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT record FROM latency WHERE archid=? AND spec_key=? AND fp_id=?",
                (archid, spec.key(), fingerprint_id(fp)),
            ).fetchone()
        if row is None:
            return None
        lat = Latency.from_dict(json.loads(row[0]))
        lat.cached = True
        return lat

    def put(self, archid: str, spec: TargetSpec, lat: Latency) -> None:
        rec = {**lat.to_dict(), "cached": False}
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?)",
                (archid, spec.key(), fingerprint_id(lat.fingerprint), json.dumps(rec), time.time()),
            )

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]


# --- one architecture on one target ---------------------------------------------------------------


def measure_model(model: nn.Module, spec: TargetSpec, *, max_seconds: float = 1.0,
                  target_rel_iqr: float = 0.03, lock: bool = True) -> Latency:
    """Time an already-built inference-form model on ``spec`` with its backend."""
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


# --- drift ------------------------------------------------------------------------------------------


@dataclass
class DriftCheck:
    reference_ms: float  # the reference model's median now
    baseline_ms: float  # ... and when the monitor started
    factor: float  # reference_ms / baseline_ms: > 1 means the machine is slower now
    drifted: bool  # |factor - 1| > bound
    time: float = field(default_factory=time.time)


class DriftMonitor:
    """Re-times a fixed reference model during a long search and records the machine's speed
    factor; figures taken while it lies beyond ``bound`` are flagged (and re-timed once when
    ``retime``). Pareto-front figures should come from undrifted measurements."""

    def __init__(self, spec: TargetSpec, reference: Any = REFERENCE_ARCH, *, bound: float = 0.10,
                 every: int = 10, retime: bool = True, max_seconds: float = 1.0) -> None:
        self.spec = spec
        self.reference = reference
        self._model: Any = None  # built on first use: constructing a monitor costs nothing
        self.bound, self.every, self.retime, self.max_seconds = bound, every, retime, max_seconds
        self.baseline: float | None = None
        self.history: list[DriftCheck] = []
        self._since = 0

    @property
    def factor(self) -> float:
        return self.history[-1].factor if self.history else 1.0

    @property
    def model(self) -> Any:
        if self._model is None:
            from ..model.compile import build

            self._model = build(self.reference, inference=True)
        return self._model

    def check(self) -> DriftCheck:
        ref = measure_model(self.model, self.spec, max_seconds=self.max_seconds).median_ms
        if self.baseline is None:
            self.baseline = ref
        f = ref / self.baseline
        c = DriftCheck(ref, self.baseline, f, abs(f - 1) > self.bound)
        self.history.append(c)
        self._since = 0
        return c

    def measure_arch(self, arch: Any, *, cache: LatencyCache | None = None,
                     remeasure: bool = False) -> Latency:
        """``measure_arch`` with a drift check every ``every`` fresh measurements."""
        if self.baseline is None or self._since >= self.every:
            self.check()
        lat = measure_arch(arch, self.spec, cache=cache, remeasure=remeasure, max_seconds=self.max_seconds)
        if lat.cached:
            return lat
        self._since += 1
        if abs(self.factor - 1) > self.bound and self.retime:
            if not self.check().drifted:  # the disturbance has passed: take the figure again
                lat = measure_arch(arch, self.spec, cache=cache, remeasure=True, max_seconds=self.max_seconds)
        lat.speed_factor = round(self.factor, 4)
        lat.drifted = abs(self.factor - 1) > self.bound
        if cache is not None:
            from ..model.arch import resolve_arch

            cache.put(resolve_arch(arch).archid, self.spec, lat)
        return lat
