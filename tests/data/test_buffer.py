"""Buffer parts: pop_first, group checks, and the JSON round trip of buffered groups."""

from __future__ import annotations

import json

import pytest

from temper.data.buffer import check_groups, groups_from_state, groups_to_state, pop_first
from temper.types import Sample


def group(gi: int, n: int = 2) -> list[Sample]:
    return [Sample(group_index=gi, index=gi * n + j, prompt=f"p{gi}") for j in range(n)]


def test_pop_first_is_fifo_and_removes_in_place():
    buffer = [group(0), group(1), group(2)]
    assert [g[0].group_index for g in pop_first(None, None, buffer, 2)] == [0, 1]
    assert [g[0].group_index for g in buffer] == [2]
    assert [g[0].group_index for g in pop_first(None, None, buffer, 5)] == [2]
    assert buffer == []


def test_check_groups(assert_message):
    check_groups([group(0), group(1)], 2, who="add_samples")
    with pytest.raises(ValueError) as info:
        check_groups([group(0), group(1, n=3)], 2, who="add_samples")
    assert_message(info.value, "add_samples", "group 1", "group_index 1", "3 samples", "--n-samples-per-prompt=2")
    with pytest.raises(ValueError, match="expected a list of groups"):
        check_groups("x", 2, who="add_samples")
    with pytest.raises(ValueError, match="group 0 is not a list of Samples"):
        check_groups([Sample(), Sample()], 2, who="add_samples")


def test_groups_round_trip_through_json():
    sample = Sample(group_index=3, index=7, prompt=[{"role": "user", "content": "hi"}], label={"answer": "4"})
    sample.append_response_tokens([5, 6], [-0.1, -0.25], finish_reason="abort", text="ab", weight_version="v2")
    sample.append_response_tokens([9], trainable=False, text="t")
    sample.reward = {"acc": 1.0, "len": 0.5}
    sample.metadata = {"tools": [{"type": "function"}], "start_rollout_id": 2}
    state = json.loads(json.dumps(groups_to_state([[sample, Sample(index=8)]])))
    restored = groups_from_state(state)
    assert restored[0][0].status is Sample.Status.ABORTED
    assert [s.to_dict() for s in restored[0]] == [sample.to_dict(), Sample(index=8).to_dict()]
