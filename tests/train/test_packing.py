"""The micro-batch plan (steps, ranks, micro-batches) and packing into one row."""

import pytest
import torch

from temper.train.packing import (
    dynamic_micro_batches,
    pack,
    plan_micro_batches,
    split_over_ranks,
    split_to_count,
    step_positions,
)


def test_steps_are_consecutive_equal_slices():
    assert step_positions(6, 3) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="equal optimizer steps"):
        step_positions(5, 2)


def test_ranks_get_balanced_token_counts_and_every_sample_once():
    lengths = [10, 1, 1, 1, 9, 2, 3, 8]
    shares = split_over_ranks(list(range(8)), lengths, 2)
    assert sorted(p for s in shares for p in s) == list(range(8))
    loads = [sum(lengths[p] for p in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= 1
    assert all(s == sorted(s) for s in shares)


def test_dynamic_packing_respects_the_token_budget():
    lengths = [7, 3, 5, 2, 9, 4, 1, 12]
    bins = dynamic_micro_batches(list(range(8)), lengths, max_tokens=10)
    assert sorted(p for b in bins for p in b) == list(range(8))
    for b in bins:
        assert sum(lengths[p] for p in b) <= 10 or len(b) == 1  # 12 > budget goes alone
    assert [7] in bins


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("dynamic", [False, True])
def test_plan_gives_every_rank_the_same_number_of_micro_batches(world_size, dynamic):
    g = torch.Generator().manual_seed(world_size)
    lengths = torch.randint(2, 40, (24,), generator=g).tolist()
    plan = plan_micro_batches(lengths, 3, world_size, micro_batch_size=3, max_tokens=50 if dynamic else None)
    assert len(plan) == 3
    for step, step_plan in enumerate(plan):
        assert len(step_plan) == world_size
        assert len({len(mbs) for mbs in step_plan}) == 1
        got = sorted(p for mbs in step_plan for mb in mbs for p in mb)
        assert got == list(range(step * 8, step * 8 + 8))
        for mbs in step_plan:
            for mb in mbs:
                if dynamic and len(mb) > 1:
                    assert sum(lengths[p] for p in mb) <= 50
                if not dynamic:
                    assert len(mb) <= 3


def test_split_to_count_halves_the_fullest_then_pads():
    lengths = [5, 5, 5, 1]
    assert split_to_count([[0, 1, 2], [3]], lengths, 3) == [[0, 2], [1], [3]]
    assert split_to_count([[0], [3]], lengths, 4) == [[0], [3], [], []]


def test_pack_concatenates_without_padding_and_restarts_positions():
    tokens = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12])]
    mb = pack(tokens, [2, 1, 3], [0, 2])
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 8, 9, 10, 11, 12]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4]]
    # hidden state at position t predicts token t + 1: responses [3, 4] and [10, 11, 12]
    assert mb.response_index.tolist() == [1, 2, 5, 6, 7]
    assert mb.targets.tolist() == [3, 4, 10, 11, 12]
    assert [t.tolist() for t in mb.split(mb.targets)] == [[3, 4], [10, 11, 12]]
    assert not mb.is_padding


def test_padding_micro_batch_runs_one_dummy_token():
    mb = pack([], [], [])
    assert mb.is_padding and mb.response_lengths == [1] and mb.input_ids.shape == (1, 2)


def test_pack_rejects_a_response_without_prompt():
    with pytest.raises(ValueError, match="no prompt token"):
        pack([torch.tensor([1, 2])], [2], [0])
