"""One way to set torch's intra-op thread count for a block of work, and put it back after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


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
