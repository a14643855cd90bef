"""common/stats.py: the rank statistics against figures worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shufflesearch.common.stats import (
    Interval,
    bootstrap_ci,
    kendall_tau,
    kendall_tau_rows,
    spearman_rho,
)

TRUTH = [1.0, 2.0, 3.0, 4.0]
SWAP = [1.0, 3.0, 2.0, 4.0]  # one pair out of six swapped


def test_tau_and_rho_by_hand():
    assert kendall_tau(TRUTH, TRUTH) == pytest.approx(1.0)
    assert kendall_tau(TRUTH, TRUTH[::-1]) == pytest.approx(-1.0)
    assert kendall_tau(TRUTH, SWAP) == pytest.approx((5 - 1) / 6)  # 5 concordant, 1 discordant
    # rho = 1 - 6 sum(d^2) / (n (n^2 - 1)): rank differences 0, 1, 1, 0
    assert spearman_rho(TRUTH, SWAP) == pytest.approx(1 - 6 * 2 / (4 * 15))


@pytest.mark.parametrize("a, b", [([1.0], [2.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]),
                                  ([1.0, 2.0], [3.0, 3.0]), ([1.0, 2.0, 3.0], [1.0, 2.0])])
def test_undefined_statistics_are_nan(a, b):
    assert math.isnan(kendall_tau(a, b)) and math.isnan(spearman_rho(a, b))


def test_tau_rows_with_ties_by_hand():
    # x has no ties. Row 1 ties its first two items and puts the third below both: of its 5
    # untied pairs 3 are concordant and 2 discordant -> (3 - 2) / sqrt(6 * 5). Row 2 is constant.
    got = kendall_tau_rows(TRUTH, np.array([[1.0, 3.0, 2.0, 4.0], [1.0, 1.0, 0.0, 2.0], [5.0] * 4]))
    assert got[0] == pytest.approx(4 / 6)
    assert got[1] == pytest.approx(1 / math.sqrt(30))
    assert got[1] == pytest.approx(kendall_tau(TRUTH, [1.0, 1.0, 0.0, 2.0]))
    assert math.isnan(got[2])


def test_bootstrap_of_a_perfect_ranking_is_one_and_seeded():
    # Every resample with two distinct items ranks them perfectly; those with one are dropped.
    assert bootstrap_ci(kendall_tau, TRUTH, TRUTH, n_boot=200) == Interval(1.0, 1.0)
    a = bootstrap_ci(kendall_tau, TRUTH, SWAP, n_boot=200, seed=3)
    assert a == bootstrap_ci(kendall_tau, TRUTH, SWAP, n_boot=200, seed=3)
    assert -1.0 <= a.lo < a.hi <= 1.0 and a.contains(kendall_tau(TRUTH, SWAP))
    narrow = bootstrap_ci(kendall_tau, TRUTH, SWAP, n_boot=200, seed=3, level=0.5)
    assert a.lo <= narrow.lo <= narrow.hi <= a.hi


def test_bootstrap_that_is_never_defined_is_nan():
    ci = bootstrap_ci(kendall_tau, [1.0, 2.0], [3.0, 3.0], n_boot=20)
    assert math.isnan(ci.lo) and math.isnan(ci.hi) and not ci.contains(0.0)

