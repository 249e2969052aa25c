"""Balanced data-parallel split of a RolloutBatch."""

import random

import pytest

from temper.rollout import balanced_partition, split_for_dp
from temper.types import RolloutBatch, Sample


def batch_of(lengths: list[int]) -> RolloutBatch:
    samples = [Sample(group_index=i // 4, index=i, tokens=[1] * n, response_length=1) for i, n in enumerate(lengths)]
    return RolloutBatch.from_samples(samples, [0.0] * len(samples), [0.0] * len(samples))


@pytest.mark.parametrize("n, parts", [(16, 2), (17, 4), (64, 8), (5, 5)])
def test_every_sample_once_counts_and_tokens_balanced(n, parts):
    rng = random.Random(n)
    lengths = [rng.randint(10, 500) for _ in range(n)]
    split = balanced_partition(lengths, parts)
    assert sorted(p for positions in split for p in positions) == list(range(n))
    assert all(positions == sorted(positions) for positions in split)
    assert max(map(len, split)) - min(map(len, split)) <= 1
    totals = [sum(lengths[p] for p in positions) for positions in split]
    assert max(totals) - min(totals) <= max(lengths)


def test_split_batch_keeps_fields_aligned():
    lengths = [100, 10, 90, 20, 80, 30, 70, 40]
    parts = split_for_dp(batch_of(lengths), 2)
    assert [len(p) for p in parts] == [4, 4]
    assert [sum(p.total_lengths) for p in parts] == [220, 220]
    for part in parts:
        assert [len(t) for t in part.tokens] == [lengths[i] for i in part.sample_indices]
        assert part.group_indices == [i // 4 for i in part.sample_indices]


def test_too_few_samples_or_bad_size():
    with pytest.raises(ValueError, match="3 samples cannot be split across 4"):
        balanced_partition([1, 2, 3], 4)
    with pytest.raises(ValueError, match="dp_size must be >= 1"):
        balanced_partition([1], 0)
