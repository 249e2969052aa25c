"""pass@k's unbiased estimator against brute-force enumeration, and the per-group metrics."""

from __future__ import annotations

import itertools
import math

import pytest

from temper.rollout.pass_at_k import ks_up_to, pass_at_k, pass_at_k_metrics


def brute_force(n: int, c: int, k: int) -> float:
    """The share of all k-subsets of n samples (c passing) that hold at least one passing sample."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_estimator_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_estimator_edges():
    assert pass_at_k(16, 0, 8) == 0.0 and pass_at_k(16, 16, 1) == 1.0 and pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(1000, 3, 500) == pytest.approx(1 - math.comb(997, 500) / math.comb(1000, 500))  # no overflow
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_ks_are_powers_of_two_up_to_n():
    assert ks_up_to(1) == [1] and ks_up_to(4) == [1, 2, 4] and ks_up_to(7) == [1, 2, 4] and ks_up_to(8) == [1, 2, 4, 8]


def test_metrics_mean_over_groups_and_pass_means_reward_one():
    rewards = [1, 0, 0, 0, 1.0, 1, 0.5, 0, -1, 0.99, 0, 0]  # 0.5 and 0.99 do not pass
    groups = [0] * 4 + [1] * 4 + [2] * 4
    metrics = pass_at_k_metrics(rewards, groups, "eval/x/")
    assert set(metrics) == {"eval/x/pass@1", "eval/x/pass@2", "eval/x/pass@4"}
    assert metrics["eval/x/pass@1"] == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)
    assert metrics["eval/x/pass@2"] == pytest.approx((brute_force(4, 1, 2) + brute_force(4, 2, 2)) / 3)
    assert metrics["eval/x/pass@4"] == pytest.approx(2 / 3)


def test_uneven_groups_stop_at_the_smallest():
    metrics = pass_at_k_metrics([1, 0, 0, 0, 0, 1], ["a", "a", "a", "a", "b", "b"], "")
    assert metrics == {"pass@1": pytest.approx((1 / 4 + 1 / 2) / 2), "pass@2": pytest.approx((1 / 2 + 1) / 2)}
    assert pass_at_k_metrics([], [], "") == {}
