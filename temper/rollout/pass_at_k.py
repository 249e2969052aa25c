"""pass@k: the chance that at least one of k samples of a prompt passes, estimated from n ≥ k samples.

Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", the Codex paper), unbiased
estimator for one prompt with n samples of which c pass:

    pass@k = 1 - C(n - c, k) / C(n, k)

computed as the product 1 - Π_{i = n-c+1}^{n} (1 - k / i), which never forms the large binomials.
The metric is the mean over prompts, for k = 1, 2, 4, ... up to the smallest group's n.

A sample passes when its reward equals 1, slime's rule (`compute_pass_rate` counts `rewards == 1`):
the built-in 0/1 rewards (math, deepscaler, gpqa), dapo's -1/1 score and an exact F1 of 1 all pass
at 1. A reward in between (partial F1, a shaped reward) does not pass.

Departures from slime: groups are found by `Sample.group_index` (not by cutting the batch into rows
of n), so groups may differ in size — each is estimated with its own n, and k stops at the smallest
group; and a group of one sample still gives pass@1 (slime logs nothing when n == 1).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

PASS_REWARD = 1.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt: n samples, c of them passing, 1 ≤ k ≤ n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def passed(reward: float) -> bool:
    return float(reward) == PASS_REWARD


def pass_at_k_metrics(rewards: Sequence[float], groups: Sequence[Hashable], prefix: str) -> dict[str, float]:
    """{prefix + "pass@k": mean over groups} for k = 1, 2, 4, ... ≤ the smallest group's size.

    rewards[i] is sample i's scalar reward and groups[i] its group key (e.g. `group_index`)."""
    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards for {len(groups)} group keys")
    counts: dict[Hashable, list[int]] = {}
    for reward, group in zip(rewards, groups):
        n_c = counts.setdefault(group, [0, 0])
        n_c[0] += 1
        n_c[1] += passed(reward)
    if not counts:
        return {}
    smallest = min(n for n, _ in counts.values())
    return {
        f"{prefix}pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        for k in ks_up_to(smallest)
    }
