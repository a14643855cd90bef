"""The environment a figure belongs to: its fingerprint, the cache folder, and the cross-process
locks that keep timing alone on the machine."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..common.threads import usable_cores
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


def fingerprint(threads: int = 1, backend: str = "torch") -> dict:
    """The environment a figure was taken in; a figure from another fingerprint is not reused."""
    fp = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": usable_cores(),  # what this process may use, not what exists
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
    if backend == "executorch":
        fp["executorch"] = package_version("executorch")
    return fp


def package_version(name: str) -> str | None:
    """An installed distribution's version, read from its metadata without importing it
    (importing ExecuTorch costs seconds); None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint_id(fp: dict) -> str:
    return stable_hash(fp)


def cache_dir() -> Path:
    env = os.environ.get("SHUFFLESEARCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "shufflesearch"


def lock_path() -> Path:
    env = os.environ.get("SHUFFLESEARCH_LOCK")
    return Path(env) if env else cache_dir() / "timing.lock"


# --- the locks --------------------------------------------------------------------------------
# Timing is exclusive across processes; compute (training, proxies, evaluation) is shared, so
# that many workers train side by side while no timing runs. flock alone favours no one: shared
# holders that overlap one another (two trainers) could keep a timing out for ever. A second
# file, the gate, makes the lock fair to timing:
#
#   timing_lock:   gate EX, then main EX, both held for the whole timing
#   compute_lock:  gate SH, then main SH, the gate released at once; main SH held for the block
#   compute_pause: (inside a compute section) if the gate is taken, drop main, wait at the gate
#
# A timer that holds the gate lets no new compute section in, and every running one steps aside
# at its next pause point (one training step) or at its end, so a timing waits for at most one
# step of each trainer however many there are. Timers queue on the gate, and each worker times
# once per trial and then trains, so trainers get their turn too.
# No deadlock: the order is gate then main, and no process waits for the gate while it holds
# main (a timing inside a compute section and a pause both drop main first). A section must not
# wait for another process (a claim, a checkpoint's lock) while it holds either file.
#
# flock locks belong to an open file, so a second open() in the same process would deadlock
# against the first: one fd per file per process and a mode make the locks re-entrant; a timing
# inside a compute section drops the shared lock, takes the exclusive one, then goes back.

LOCK_TRACE_ENV = "SHUFFLESEARCH_LOCK_TRACE"  # a folder: every hold is appended to PID.log there

_state_guard = threading.Lock()
_proc: dict[str, Any] = {"pid": None, "path": None, "main": None, "gate": None, "mode": None,
                         "since": None}


def _own() -> None:
    if _proc["pid"] != os.getpid():  # forked child: the parent's fds and holds are not ours
        _proc.update(pid=os.getpid(), path=None, main=None, gate=None, mode=None, since=None)
    if _proc["mode"] is None and _proc["path"] != lock_path():  # SHUFFLESEARCH_LOCK changed
        for which in ("main", "gate"):
            if _proc[which] is not None:
                os.close(_proc[which])
        _proc.update(path=lock_path(), main=None, gate=None)


def _flock(which: str, op: int) -> None:
    if _proc[which] is None:
        p = _proc["path"]
        p = p if which == "main" else p.with_name(p.name + ".gate")
        p.parent.mkdir(parents=True, exist_ok=True)
        _proc[which] = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(_proc[which], op)


def _enter(mode: int) -> None:
    """From no hold to ``mode`` (LOCK_EX: timing, LOCK_SH: compute), through the gate."""
    asked = time.monotonic()
    if mode == fcntl.LOCK_EX:
        _flock("gate", fcntl.LOCK_EX)  # from here on no new compute section starts
        try:
            _flock("main", fcntl.LOCK_EX)  # the running ones end or pause
        except BaseException:  # interrupted while waiting: let the others through
            _flock("gate", fcntl.LOCK_UN)
            raise
    else:
        _flock("gate", fcntl.LOCK_SH)  # waits while a timing runs or waits to run
        try:
            _flock("main", fcntl.LOCK_SH)
        finally:
            _flock("gate", fcntl.LOCK_UN)
    _proc.update(mode=mode, since=(asked, time.monotonic()))


def _leave() -> None:
    mode = _proc["mode"]
    if mode is None:
        return
    released = time.monotonic()
    _flock("main", fcntl.LOCK_UN)
    if mode == fcntl.LOCK_EX:
        _flock("gate", fcntl.LOCK_UN)
    _proc["mode"] = None
    trace = os.environ.get(LOCK_TRACE_ENV)
    if trace:
        asked, got = _proc["since"]
        kind = "timing" if mode == fcntl.LOCK_EX else "compute"
        with open(Path(trace) / f"{os.getpid()}.log", "a") as f:
            f.write(f"{kind} {asked:.6f} {got:.6f} {released:.6f}\n")


@contextlib.contextmanager
def _held(mode: int) -> Iterator[None]:
    with _state_guard:
        _own()
        prev = _proc["mode"]
        # Exclusive already covers shared; otherwise (re)acquire in the wanted mode.
        need = not (prev == fcntl.LOCK_EX or prev == mode)
        if need:
            _leave()
            _enter(mode)
    try:
        yield
    finally:
        with _state_guard:
            if need:
                _leave()
                if prev is not None:
                    _enter(prev)


def timing_lock() -> contextlib.AbstractContextManager[None]:
    """Exclusive across processes: no other timing and no compute section meanwhile."""
    return _held(fcntl.LOCK_EX)


def compute_lock() -> contextlib.AbstractContextManager[None]:
    """Shared across processes: proxies and training hold it so they never overlap a timing.
    A long section calls ``compute_pause()`` between its steps so a timing need not wait for
    all of it."""
    return _held(fcntl.LOCK_SH)


def compute_pause() -> None:
    """Inside a compute section: if a timing holds or waits for the lock, step aside until it is
    done (another process's timing; one's own cannot be pending). Cheap when none is: two
    flock calls. Outside a compute section, nothing."""
    if _proc["mode"] != fcntl.LOCK_SH or _proc["pid"] != os.getpid():
        return
    with _state_guard:
        if _proc["mode"] != fcntl.LOCK_SH:
            return
        try:
            _flock("gate", fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a timer has the gate: let it in, queue behind it
            _leave()
            _enter(fcntl.LOCK_SH)
            return
        _flock("gate", fcntl.LOCK_UN)


def clock_for(threads: int) -> str:
    """Which clock times a run. With one thread every op runs inline on the calling thread, so
    its CPU time is the run's latency on an otherwise idle core; unlike wall time it does not
    count the slices the scheduler gives to other processes on a shared machine. With more
    threads the wall clock is the only honest one. ``SHUFFLESEARCH_CLOCK=wall`` forces wall."""
    if os.environ.get("SHUFFLESEARCH_CLOCK") == "wall" or threads != 1:
        return "wall"
    return "thread_cpu"
