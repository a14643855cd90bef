"""Threads and processes: one way to set torch's intra-op thread count for a block of work (and
put it back after), the threads a search trains with, and how many worker processes it runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from ..errors import UserError


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; ``None`` leaves the setting alone.

    Timing and training fix the thread count because a figure taken with another count is a
    different measurement; the old count is restored even when the block raises."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


TRAIN_THREADS_ENV = "SHUFFLESEARCH_TRAIN_THREADS"


def train_threads() -> int:
    """Threads for proxy-task training in a search and its check: 1, or the environment's
    ``SHUFFLESEARCH_TRAIN_THREADS`` (inherited by worker processes). One by default because
    the proxy task's convolutions are too small to split well, and on shared cores torch's
    threads wait on each other (bench/train_threads.py measured 1 thread 4.8x faster than 2 at
    load average 6); the cores are used by ``--workers`` instead."""
    try:
        return max(1, int(os.environ.get(TRAIN_THREADS_ENV, "1")))
    except ValueError:
        return 1


# --- worker processes ------------------------------------------------------------------------

Workers = int | Literal["auto"]  # how many worker processes a search runs: N >= 1, or auto


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset, cgroups' cpusets and
    container limits narrow), not the cores the machine has; os.cpu_count() where the platform
    has no affinity call."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(value: object, name: str = "workers") -> Workers:
    """``value`` as a Workers: ``"auto"`` (any case), or an integer >= 1 (an int, or a string of
    digits as a command line gives it). Anything else is a UserError naming ``name``."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"{value!r} must be auto or an integer >= 1", field=name) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{value!r} must be auto or an integer >= 1", field=name)
    return value


def resolve_workers(workers: Workers, todo: int | None = None) -> int:
    """The number of worker processes ``workers`` asks for. ``auto``: one per usable core, each
    training with ``train_threads()`` threads (so cores // threads), but no more than the
    ``todo`` trials still to run and never fewer than 1. A number is taken as given."""
    workers = check_workers(workers)
    if workers != "auto":
        return workers
    n = usable_cores() // train_threads()
    if todo is not None:
        n = min(n, todo)
    return max(1, n)
