"""common/threads.py: the thread count a block runs with, and the training default."""

from __future__ import annotations

import pytest
import torch

from shufflesearch.common.threads import TRAIN_THREADS_ENV, torch_threads, train_threads


def test_a_block_runs_with_its_threads_and_puts_them_back():
    before = torch.get_num_threads()
    n = 2 if before != 2 else 3
    with torch_threads(n):
        assert torch.get_num_threads() == n
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(n):
        assert torch.get_num_threads() == n
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored even when the block raised
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("value, want", [(None, 1), ("3", 3), ("0", 1), ("-2", 1), ("two", 1)])
def test_training_threads_come_from_the_environment(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv(TRAIN_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(TRAIN_THREADS_ENV, value)
    assert train_threads() == want
