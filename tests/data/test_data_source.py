"""Data sources: group/index assignment over epochs, the buffer, and exact save/restore."""

from __future__ import annotations

import json
import os

import pytest

from temper.data.data_source import (
    RolloutDataSource,
    RolloutDataSourceWithBuffer,
    build_data_source,
    num_rollout_from_epochs,
    state_path,
)
from temper.types import Sample


@pytest.fixture
def args_for(write_jsonl, rows_of, make_args):
    """args_for(n_prompts, **flags): args over a JSONL file of numbered prompts (label = row number)."""

    def make(n_prompts: int = 5, **flags):
        return make_args(prompt_data=write_jsonl(rows_of(n_prompts)), label_key="label", **flags)

    return make


def labels(groups: list[list[Sample]]) -> list:
    return [g[0].label for g in groups]


def summary(groups: list[list[Sample]]) -> list[tuple]:
    return [(s.label, s.group_index, s.index, s.prompt) for g in groups for s in g]


def test_groups_are_deep_copies_with_running_indices(args_for):
    source = RolloutDataSource(args_for(5, n_samples_per_prompt=3))
    groups = source.get_samples(2)
    assert [[(s.label, s.group_index, s.index) for s in g] for g in groups] == [
        [(0, 0, 0), (0, 0, 1), (0, 0, 2)],
        [(1, 1, 3), (1, 1, 4), (1, 1, 5)],
    ]
    groups[0][0].metadata["touched"] = True
    assert "touched" not in groups[0][1].metadata and "touched" not in source.dataset[0].metadata


def test_get_samples_wraps_into_the_next_epoch(args_for):
    source = RolloutDataSource(args_for(5, n_samples_per_prompt=2))
    first, second = source.get_samples(3), source.get_samples(4)
    assert labels(first) == [0, 1, 2] and labels(second) == [3, 4, 0, 1]
    assert (source.epoch_id, source.sample_offset) == (1, 2)
    indices = [s.index for g in first + second for s in g]
    assert indices == list(range(14))
    assert [g[0].group_index for g in first + second] == list(range(7))


def test_get_samples_larger_than_the_dataset(args_for):
    source = RolloutDataSource(args_for(3))
    assert labels(source.get_samples(8)) == [0, 1, 2, 0, 1, 2, 0, 1]
    assert source.epoch_id == 2
    assert source.get_samples(0) == []


def test_each_epoch_is_reshuffled(args_for):
    source = RolloutDataSource(args_for(20, rollout_shuffle=True, rollout_seed=5))
    epochs = [labels(source.get_samples(20)) for _ in range(3)]
    assert all(sorted(e) == list(range(20)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs == [[source.dataset[i].label for i in source.dataset.order(e)] for e in range(3)]


def test_len_and_num_rollout(args_for):
    source = RolloutDataSource(args_for(10))
    assert len(source) == 10
    assert num_rollout_from_epochs(len(source), 3, 2) == 6
    with pytest.raises(ValueError, match="fewer than --rollout-batch-size=16"):
        num_rollout_from_epochs(len(source), 16, 1)


def test_without_global_dataset_samples_are_empty(make_args):
    source = RolloutDataSource(make_args(rollout_global_dataset=False, n_samples_per_prompt=2))
    groups = source.get_samples(2)
    assert len(source) == 0
    assert [(s.prompt, s.group_index, s.index) for g in groups for s in g] == [
        ("", 0, 0),
        ("", 0, 1),
        ("", 1, 2),
        ("", 1, 3),
    ]


def test_plain_source_has_no_buffer(args_for):
    with pytest.raises(RuntimeError, match="RolloutDataSourceWithBuffer"):
        RolloutDataSource(args_for(3)).add_samples([[Sample()]])


def test_buffer_is_drained_first_in_fifo_order(args_for):
    source = RolloutDataSourceWithBuffer(args_for(5, n_samples_per_prompt=2))
    a, b = source.get_samples(2)
    a[0].response = "partial"
    source.add_samples([b, a])
    groups = source.get_samples(3)
    assert labels(groups) == [1, 0, 2]
    assert groups[1] is a and groups[1][0].response == "partial"
    assert [s.index for s in groups[2]] == [4, 5]  # the dataset's counters continue
    assert source.buffer == []


def test_add_samples_rejects_wrong_group_size(args_for, assert_message):
    source = RolloutDataSourceWithBuffer(args_for(5, n_samples_per_prompt=2))
    group = source.get_samples(1)[0]
    with pytest.raises(ValueError) as info:
        source.add_samples([group, group[:1]])
    assert_message(info.value, "add_samples", "group 1", "has 1 samples", "--n-samples-per-prompt=2")
    assert source.buffer == []
    source.add_samples([])
    assert source.buffer == []


LAST_FIRST = """
def pop_last(args, rollout_id, buffer, num_samples):
    taken = buffer[-num_samples:][::-1]
    del buffer[-num_samples:]
    return taken

def greedy(args, rollout_id, buffer, num_samples):
    return list(buffer) + list(buffer)
"""


def test_custom_buffer_filter_from_a_file(args_for, tmp_path):
    (tmp_path / "filters.py").write_text(LAST_FIRST)
    source = RolloutDataSourceWithBuffer(args_for(6, buffer_filter_path=f"{tmp_path}/filters.py:pop_last"))
    source.add_samples(source.get_samples(3))
    assert labels(source.get_samples(2)) == [2, 1]
    assert labels(source.get_samples(2)) == [0, 3]


def test_buffer_filter_returning_too_many_groups(args_for, tmp_path):
    (tmp_path / "filters.py").write_text(LAST_FIRST)
    source = RolloutDataSourceWithBuffer(args_for(6, buffer_filter_path=f"{tmp_path}/filters.py:greedy"))
    source.add_samples(source.get_samples(2))
    with pytest.raises(ValueError, match="'greedy' returned 4 groups for num_samples=3"):
        source.get_samples(3)


def finish(groups: list[list[Sample]]) -> list[list[Sample]]:
    """Give the groups responses, rewards and statuses, as an aborted partial rollout would."""
    for group in groups:
        for s in group:
            s.append_response_tokens([s.index, 7], [-0.5, -1.25], finish_reason="abort", text="xy", weight_version="3")
            s.reward = {"acc": 0.5}
            s.metadata["start_rollout_id"] = 1
    return groups


@pytest.mark.parametrize("shuffle", [False, True])
def test_save_and_load_continue_exactly(args_for, tmp_path, shuffle):
    args = args_for(7, n_samples_per_prompt=2, rollout_shuffle=shuffle, rollout_seed=11)
    original = RolloutDataSourceWithBuffer(args)
    original.get_samples(5)
    original.add_samples(finish(original.get_samples(4)[1:3]))  # mid-epoch 1, two groups buffered
    original.metadata["seen"] = [1, 2]
    path = original.save(3, str(tmp_path))
    assert path == state_path(str(tmp_path), 3) == os.path.join(tmp_path, "rollout", "data_source_state_3.json")

    restored = RolloutDataSourceWithBuffer(args)
    assert restored.load(3, str(tmp_path))
    assert restored.metadata == {"seen": [1, 2]} and len(restored.buffer) == 2
    for n in (1, 3, 6, 9):  # drains the buffer, then crosses two epoch boundaries
        ahead, again = original.get_samples(n), restored.get_samples(n)
        assert [s.to_dict() for g in again for s in g] == [s.to_dict() for g in ahead for s in g]
    assert restored.state_dict() == original.state_dict()


def test_state_is_json_with_the_documented_keys(args_for, tmp_path):
    source = RolloutDataSourceWithBuffer(args_for(4, n_samples_per_prompt=1))
    source.add_samples(source.get_samples(3)[:1])
    source.save(0, str(tmp_path))
    with open(state_path(str(tmp_path), 0)) as f:
        state = json.load(f)
    assert state == {
        "format": "temper.data_source/1",
        "epoch_id": 0,
        "sample_offset": 3,
        "sample_group_index": 3,
        "sample_index": 3,
        "metadata": {},
        "num_prompts": 4,
        "rollout_shuffle": False,
        "rollout_seed": 42,
        "buffer": [[source.buffer[0][0].to_dict()]],
    }


def test_load_picks_latest_and_handles_absence(args_for, tmp_path, caplog):
    source = RolloutDataSourceWithBuffer(args_for(4, save=str(tmp_path), load=str(tmp_path)))
    assert not source.load()
    assert "starts from the beginning" in caplog.text
    source.get_samples(1)
    source.save(1)
    source.get_samples(2)
    source.save(10)
    fresh = RolloutDataSourceWithBuffer(args_for(4, load=str(tmp_path)))
    assert fresh.load() and fresh.sample_offset == 3
    assert not fresh.load(5)
    assert not RolloutDataSourceWithBuffer(args_for(4)).load(1)  # no --load: a fresh start


def test_load_warns_when_the_data_changed(args_for, tmp_path, caplog):
    source = RolloutDataSourceWithBuffer(args_for(4))
    source.save(0, str(tmp_path))
    other = RolloutDataSourceWithBuffer(args_for(6, rollout_shuffle=True))
    assert other.load(0, str(tmp_path))
    assert "num_prompts: saved 4, now 6" in caplog.text and "rollout_shuffle: saved False, now True" in caplog.text


def test_plain_source_refuses_a_state_with_a_buffer(args_for, tmp_path):
    source = RolloutDataSourceWithBuffer(args_for(4))
    source.add_samples(source.get_samples(1))
    with pytest.raises(ValueError, match="holds 1 buffered groups"):
        RolloutDataSource(args_for(4)).load_state_dict(source.state_dict())


def test_save_rejects_values_json_cannot_hold(args_for, tmp_path):
    source = RolloutDataSourceWithBuffer(args_for(4))
    group = source.get_samples(1)
    group[0][0].metadata["blob"] = object()
    source.add_samples(group)
    with pytest.raises(TypeError, match="not JSON-serializable.*JSON values"):
        source.save(0, str(tmp_path))
    assert not os.path.exists(state_path(str(tmp_path), 0))


def test_build_data_source(args_for, tmp_path):
    assert type(build_data_source(args_for(3))) is RolloutDataSourceWithBuffer
    args = args_for(3, data_source_path="slime.rollout.data_source.RolloutDataSource")
    assert type(build_data_source(args)) is RolloutDataSource
    (tmp_path / "ds.py").write_text(
        "from temper.data import RolloutDataSource\nclass Mine(RolloutDataSource):\n    pass\n"
    )
    assert type(build_data_source(args_for(3, data_source_path=f"{tmp_path}/ds.py:Mine"))).__name__ == "Mine"
