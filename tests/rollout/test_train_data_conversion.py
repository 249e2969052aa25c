"""--custom-convert-samples-to-train-data-path: slime's fn(args, samples) -> dict, loaded from a file when the
rollout manager starts, its dict turned into the trainer's batch; broken ones name the flag."""

from __future__ import annotations

import pytest
from rollout_helpers import make_args, write_jsonl, write_plugin

from temper.data import PluginError
from temper.rollout import RolloutManager

PLUGIN = """
from temper.types import Sample

def rollout(args, rollout_id, data_source, evaluation=False):
    return [[Sample(group_index=g, index=2 * g + i, tokens=[5, 6, 7, 8 + i], response_length=2, reward=float(i),
                    status=Sample.Status.COMPLETED, weight_versions=["3"]) for i in range(2)] for g in range(2)]

def convert(args, samples):
    '''slime's layout: lists, one entry per training sample; rewards scaled, the first response token masked.'''
    return {
        "tokens": [s.tokens for s in samples],
        "response_lengths": [s.response_length for s in samples],
        "rewards": [10.0 * s.reward for s in samples],
        "raw_reward": [s.reward for s in samples],
        "loss_masks": [[0, 1] for s in samples],
        "truncated": [False for s in samples],
        "sample_indices": [s.index for s in samples],
        "rollout_log_probs": [[-0.5, -0.25] for s in samples],
    }

def fan_out(args, samples):
    '''One training sample per response token of the first sample: counts need not match.'''
    first = samples[0]
    return {"tokens": [first.tokens[:3], first.tokens], "response_lengths": [1, 2], "rewards": [1.0, 2.0],
            "loss_masks": [[1], [1, 1]], "sample_indices": [first.index, first.index]}

def short_mask(args, samples):
    return {**convert(args, samples), "loss_masks": [[1] for s in samples]}

def no_rewards(args, samples):
    return {k: v for k, v in convert(args, samples).items() if k != "rewards"}

def one_parameter(samples):
    return {}

async def asynchronous(args, samples):
    return {}
"""


@pytest.fixture()
def plugin(tmp_path):
    return write_plugin(tmp_path, "convert_plugins", PLUGIN)


def manager(plugin, tmp_path, fn: str) -> RolloutManager:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"input": "q"}])
    args = make_args("--prompt-data", prompts, "--n-samples-per-prompt", "2", "--rollout-function-path",
                     f"{plugin}:rollout", "--custom-convert-samples-to-train-data-path", f"{plugin}:{fn}")
    return RolloutManager(args, "http://127.0.0.1:9")


def test_dict_becomes_the_batch(plugin, tmp_path):
    batch = manager(plugin, tmp_path, "convert").generate(0)
    assert batch.rewards.tolist() == [0.0, 10.0, 0.0, 10.0]  # the function's rewards, no group normalization
    assert batch.raw_rewards.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert [m.tolist() for m in batch.loss_masks] == [[0.0, 1.0]] * 4
    assert batch.sample_indices == [0, 1, 2, 3] and batch.group_indices == [0, 0, 1, 1]
    assert batch.tokens[1].tolist() == [5, 6, 7, 9] and batch.weight_versions == [["3"]] * 4
    assert batch.rollout_log_probs[0].tolist() == [-0.5, -0.25]


def test_training_samples_need_not_be_one_per_sample(plugin, tmp_path):
    batch = manager(plugin, tmp_path, "fan_out").generate(0)
    assert batch.response_lengths == [1, 2] and batch.raw_rewards.tolist() == [1.0, 2.0]
    assert batch.group_indices == [0, 0] and batch.rollout_log_probs is None


@pytest.mark.parametrize("fn, message", [
    ("short_mask", "'loss_masks'[0] has 1 entries for response_lengths[0] = 2"),
    ("no_rewards", "returned a dict without 'rewards'"),
])  # fmt: skip
def test_wrong_result_names_the_flag(plugin, tmp_path, fn, message):
    with pytest.raises(TypeError, match="--custom-convert-samples-to-train-data-path: the function") as e:
        manager(plugin, tmp_path, fn).generate(0)
    assert message in str(e.value) and 'expected slime\'s fn(args, samples) -> dict with "tokens"' in str(e.value)


@pytest.mark.parametrize("fn, message", [
    ("one_parameter", "cannot be called as fn(args, samples)"),
    ("asynchronous", "is async"),
    ("missing", "has no 'missing'"),
])  # fmt: skip
def test_broken_function_stops_the_start(plugin, tmp_path, fn, message):
    with pytest.raises(PluginError, match="--custom-convert-samples-to-train-data-path") as e:
        manager(plugin, tmp_path, fn)
    assert message in str(e.value)
