from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository
SPACES = ROOT / "tests" / "spaces"  # the small search spaces the tests run


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny test models gain nothing from threads, and on a busy 2-core machine extra threads
    make them crawl. Tests that are about threads set their own count."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Latency cache, locks and calibration go to a temporary folder, never the user's."""
    d = tmp_path_factory.mktemp("cache")
    os.environ["SHUFFLESEARCH_CACHE_DIR"] = str(d)
    yield d


@pytest.fixture(scope="session")
def random_archs():
    """50 distinct valid random architectures from tests/spaces/random_archs.yaml."""
    from shufflesearch.search.space import load_space

    return load_space(SPACES / "random_archs.yaml").sample_random(50, seed=1)
