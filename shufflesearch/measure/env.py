"""The environment a figure belongs to: its fingerprint, the cache folder, and the cross-process
locks that keep timing alone on the machine."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .target import stable_hash

# --- environment ----------------------------------------------------------------------------


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
    if backend.startswith("onnxruntime"):
        try:
            import onnxruntime

            fp["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            fp["onnxruntime"] = None
    return fp


def fingerprint_id(fp: dict) -> str:
    return stable_hash(fp)


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


def clock_for(threads: int) -> str:
    """Which clock times a run. With one thread every op runs inline on the calling thread, so
    its CPU time is the run's latency on an otherwise idle core; unlike wall time it does not
    count the slices the scheduler gives to other processes on a shared machine. With more
    threads the wall clock is the only honest one. ``SHUFFLESEARCH_CLOCK=wall`` forces wall."""
    if os.environ.get("SHUFFLESEARCH_CLOCK") == "wall" or threads != 1:
        return "wall"
    return "thread_cpu"
