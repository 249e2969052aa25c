"""The default rollout function's logic with plug-ins loaded from files (no engine needed):
concurrency cap, dynamic filter + over-sampling, abort + partial rollout, hooks, fan-out, eval."""

from __future__ import annotations

import pytest
from rollout_helpers import make_args, write_jsonl, write_plugin

from temper.data import PromptDataset, PromptFormat, RolloutDataSourceWithBuffer
from temper.rollout import generate_rollout
from temper.rollout import rollout as rollout_module
from temper.types import Sample

FAKE_GENERATE = """
import asyncio
from temper.rollout.generate import get_state
from temper.types import Sample

IN_FLIGHT = [0, 0]  # now, max

async def generate(args, sample, sampling_params):
    '''Two response tokens; label "slow": one token, then wait for the abort (when starting fresh).'''
    IN_FLIGHT[0] += 1
    IN_FLIGHT[1] = max(IN_FLIGHT)
    try:
        await asyncio.sleep(0.01)
        if not sample.tokens:
            sample.tokens = [1, 2]
        sample.metadata.setdefault("seeds", []).append(sampling_params["sampling_seed"])
        if sample.label == "slow" and sample.response_length == 0:
            sample.append_response_tokens([5], [-0.5])
            state = await get_state(args)
            for _ in range(1000):
                if state.aborted:
                    sample.set_finish_reason("abort")
                    return sample
                await asyncio.sleep(0.005)
            raise AssertionError("never aborted")
        sample.append_response_tokens([3, 4], [-0.1, -0.2], finish_reason="stop", text=str(sample.label))
        return sample
    finally:
        IN_FLIGHT[0] -= 1

async def fan_out(args, sample, sampling_params):
    first = await generate(args, sample, sampling_params)
    second = Sample(group_index=sample.group_index, index=sample.index, prompt=sample.prompt, label=sample.label,
                    tokens=[1, 2, 9], response_length=1, response="9", status=Sample.Status.COMPLETED)
    return [first, second]

async def explode(args, sample, sampling_params):
    if sample.label == "boom":
        raise ValueError("engine said no")
    return await generate(args, sample, sampling_params)

async def eval_aware(args, sample, sampling_params, evaluation=False):
    sample.metadata["evaluation"] = evaluation
    return await generate(args, sample, sampling_params)

GROUP_CALLS = []

async def custom_generate(args, samples, evaluation=False):  # slime's list form: a group in, the list out
    GROUP_CALLS.append(([s.index for s in samples], evaluation))
    for s in samples:
        await generate(args, s, {"sampling_seed": 0})
    return samples

def rm(args, sample):
    return 0.0 if sample.label == "zero" else float(sample.index % 2)

def sample_filter(args, groups):
    for group in groups:
        group[0].remove_sample = True

def all_samples(args, groups, data_source):
    data_source.metadata["seen_groups"] = len(groups)
"""


@pytest.fixture()
def plugin(tmp_path):
    return write_plugin(tmp_path, "fake_engine_plugins", FAKE_GENERATE)


def rollout_args(tmp_path, plugin, labels: list[str], *flags: str):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"input": f"q{i}", "label": lab} for i, lab in enumerate(labels)])
    return make_args(
        "--prompt-data", data, "--label-key", "label", "--n-samples-per-prompt", "4",
        "--custom-generate-function-path", f"{plugin}:generate", "--custom-rm-path", f"{plugin}:rm", *flags,
    )  # fmt: skip


def module_of(plugin):
    import sys

    return next(
        m
        for name, m in sys.modules.items()
        if name.startswith("temper_plugin_fake_engine_plugins") and m.__file__ == str(plugin)
    )


def test_groups_are_complete_sorted_and_concurrency_is_capped(tmp_path, plugin):
    args = rollout_args(
        tmp_path, plugin, ["a", "b", "c", "d"], "--rollout-batch-size", "4", "--sglang-server-concurrency", "3"
    )
    out = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert [[s.group_index for s in g] for g in out.samples] == [[g] * 4 for g in range(4)]
    samples = [s for g in out.samples for s in g]
    assert [s.index for s in samples] == list(range(16))
    assert all(s.status == Sample.Status.COMPLETED and s.reward == s.index % 2 for s in samples)
    assert all(s.rollout_id == s.index for s in samples)
    assert len({s.metadata["seeds"][0] for s in samples}) == 16
    assert module_of(plugin).IN_FLIGHT[1] == 3  # sglang_server_concurrency x 1 engine (no router)
    assert out.metrics["rollout/num_groups_kept"] == 4 and out.metrics["rollout/num_groups_pulled"] == 4


def test_dynamic_filter_with_over_sampling_keeps_only_varied_groups(tmp_path, plugin):
    labels = ["zero", "zero", "zero", "mixed", "mixed", "mixed", "zero", "mixed"]
    filter_path = "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std"  # slime's name works
    args = rollout_args(
        tmp_path, plugin, labels, "--over-sampling-batch-size", "2", "--dynamic-sampling-filter-path", filter_path
    )
    out = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert len(out.samples) == 2
    assert all(s.label == "mixed" for g in out.samples for s in g)
    assert out.metrics["rollout/dynamic_filter/drop_zero_std_0.0"] >= 3
    assert out.metrics["rollout/num_groups_pulled"] >= 5


def test_fallback_filter_keeps_groups_when_short(tmp_path, plugin):
    args = rollout_args(
        tmp_path,
        plugin,
        ["zero"] * 4,
        "--dynamic-sampling-filter-path",
        "temper.rollout.filters.check_reward_nonzero_std_with_fallback",
    )
    out = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert len(out.samples) == 2 and out.metrics["rollout/num_groups_pulled"] == 2


def test_a_filter_that_rejects_everything_stops(tmp_path, plugin, monkeypatch):
    monkeypatch.setattr(rollout_module, "MAX_DROPPED_FACTOR", 2)
    args = rollout_args(
        tmp_path,
        plugin,
        ["zero"] * 4,
        "--dynamic-sampling-filter-path",
        "temper.rollout.filters.check_reward_nonzero_std",
    )
    with pytest.raises(RuntimeError, match="seems to reject every group"):
        generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))


def test_abort_returns_unfinished_groups_to_the_buffer_and_continues_them(tmp_path, plugin):
    args = rollout_args(
        tmp_path,
        plugin,
        ["fast", "slow", "slow"],
        "--rollout-batch-size",
        "1",
        "--over-sampling-batch-size",
        "3",
        "--partial-rollout",
    )
    source = RolloutDataSourceWithBuffer(args)
    first = generate_rollout(args, 0, source)
    assert [g[0].group_index for g in first.samples] == [0]
    assert [[s.group_index for s in g] for g in source.buffer] == [[1] * 4, [2] * 4]
    aborted = [s for g in source.buffer for s in g]
    assert all(s.status == Sample.Status.ABORTED and s.response_length == 1 and s.reward is None for s in aborted)
    assert all(s.metadata["start_rollout_id"] == 0 for s in aborted)
    assert first.metrics["rollout/num_groups_recycled"] == 2

    second = generate_rollout(args, 1, source)
    everything = [s for g in second.samples + source.buffer for s in g]
    assert sorted({s.group_index for s in everything}) == [1, 2, 3]
    continued = [s for s in everything if s.group_index in (1, 2)]
    assert all(s.status == Sample.Status.COMPLETED and s.tokens == [1, 2, 5, 3, 4] for s in continued)
    assert all(s.metadata["start_rollout_id"] == 0 and s.reward is not None for s in continued)
    assert len({s.index for s in everything}) == len(everything) == 12


def test_without_partial_rollout_unfinished_groups_are_dropped(tmp_path, plugin):
    args = rollout_args(
        tmp_path, plugin, ["fast", "slow", "slow"], "--rollout-batch-size", "1", "--over-sampling-batch-size", "3"
    )
    source = RolloutDataSourceWithBuffer(args)
    out = generate_rollout(args, 0, source)
    assert len(out.samples) == 1 and source.buffer == []
    assert out.metrics["rollout/num_groups_aborted_or_surplus"] == 2 and out.metrics["rollout/num_groups_recycled"] == 0


def test_sample_filter_and_all_samples_hooks(tmp_path, plugin):
    args = rollout_args(
        tmp_path, plugin, ["zero", "mixed", "mixed"],
        "--dynamic-sampling-filter-path", "temper.rollout.filters.check_reward_nonzero_std",
        "--rollout-sample-filter-path", f"{plugin}:sample_filter",
        "--rollout-all-samples-process-path", f"{plugin}:all_samples",
    )  # fmt: skip
    source = RolloutDataSourceWithBuffer(args)
    out = generate_rollout(args, 0, source)
    assert [[s.remove_sample for s in g] for g in out.samples] == [[True, False, False, False]] * 2
    dropped = out.metrics["rollout/num_groups_dropped"]
    assert dropped >= 1 and source.metadata["seen_groups"] == 2 + dropped  # kept + filtered out


def test_fan_out_generate_keeps_siblings_in_their_group(tmp_path, plugin):
    args = rollout_args(tmp_path, plugin, ["a", "b"], "--custom-generate-function-path", f"{plugin}:fan_out")
    out = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert [len(g) for g in out.samples] == [8, 8]
    for group in out.samples:
        assert {s.group_index for s in group} == {group[0].group_index}
        assert (
            [s.rollout_id for s in group[0::2]] == [s.rollout_id for s in group[1::2]] == [s.index for s in group[0::2]]
        )


def test_a_failing_generate_stops_the_rollout_cleanly(tmp_path, plugin):
    args = rollout_args(tmp_path, plugin, ["a", "slow", "boom", "b"], "--rollout-batch-size", "4",
                        "--custom-generate-function-path", f"{plugin}:explode")  # fmt: skip
    source = RolloutDataSourceWithBuffer(args)
    with pytest.raises(ValueError, match="engine said no"):
        generate_rollout(args, 0, source)  # the "slow" group is aborted and drained, not left running
    calm = write_jsonl(tmp_path / "calm.jsonl", [{"input": f"q{i}", "label": "a"} for i in range(4)])
    source = RolloutDataSourceWithBuffer(args, dataset=PromptDataset(calm, PromptFormat(label_key="label")))
    out = generate_rollout(args, 1, source)  # the next rollout, same process state, starts clean
    assert len(out.samples) == 4 and all(s.status == Sample.Status.COMPLETED for g in out.samples for s in g)


def test_eval_covers_every_dataset(tmp_path, plugin):
    a = write_jsonl(tmp_path / "a.jsonl", [{"input": "x", "label": "mixed"}, {"input": "y", "label": "zero"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"input": "z", "label": "mixed"}])
    args = rollout_args(
        tmp_path, plugin, ["a"], "--eval-prompt-data", "set_a", a, "set_b", b, "--n-samples-per-eval-prompt", "2",
        "--custom-generate-function-path", f"{plugin}:eval_aware",
    )  # fmt: skip
    out = generate_rollout(args, 0, None, evaluation=True)
    assert all(s.metadata["evaluation"] is True for d in out.data.values() for s in d["samples"])
    assert sorted(out.data) == ["set_a", "set_b"]
    assert out.data["set_a"]["rewards"] == [0.0, 1.0, 0.0, 0.0]  # index % 2 for "mixed", 0 for "zero"
    assert out.data["set_b"]["truncated"] == [False, False]
    assert [s.index for s in out.data["set_a"]["samples"]] == [0, 1, 2, 3]
    assert out.metrics["eval/set_a"] == 0.25
    with pytest.raises(ValueError, match="--group-rm .* does not apply to evaluation"):
        generate_rollout(make_args("--group-rm", "--eval-prompt-data", "a", a), 0, None, evaluation=True)


def test_list_style_generate_gets_each_group_once_and_is_scored(tmp_path, plugin):
    """`custom_generate(args, samples, evaluation=False)`: one call per group, in training and evaluation."""
    args = rollout_args(tmp_path, plugin, ["a", "b"], "--custom-generate-function-path", f"{plugin}:custom_generate")
    out = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert sorted(module_of(plugin).GROUP_CALLS) == [([0, 1, 2, 3], False), ([4, 5, 6, 7], False)]
    assert [[s.reward for s in g] for g in out.samples] == [[0.0, 1.0, 0.0, 1.0]] * 2  # index % 2
    assert all(s.rollout_id == s.index and s.status == Sample.Status.COMPLETED for g in out.samples for s in g)
    args.eval_prompt_data = ["e", write_jsonl(tmp_path / "e.jsonl", [{"input": "x", "label": "a"}])]
    assert generate_rollout(args, 0, None, evaluation=True).data["e"]["rewards"] == [0.0]
    assert module_of(plugin).GROUP_CALLS[-1] == ([0], True)


CLASS_RM = """
class CustomRewardModel:
    built, calls = [], []

    def __init__(self, model_path):
        CustomRewardModel.built.append(model_path)

    def compute_reward(self, prompts, responses):
        CustomRewardModel.calls.append(list(prompts))
        return [float(r == "a") for r in responses]
"""


def test_class_reward_model_built_once_and_batched_over_groups(tmp_path, plugin):
    """slime's page: `--custom-rm-path custom_rm.py` (a bare file, one class): one compute_reward call per group."""
    from temper.data import load_function

    rm_file = write_plugin(tmp_path, "custom_rm", CLASS_RM)
    args = rollout_args(tmp_path, plugin, ["a", "b"], "--custom-rm-path", str(rm_file), "--reward-model-path", "rm")
    out = generate_rollout(args, 0, RolloutDataSourceWithBuffer(args))
    assert [[s.reward for s in g] for g in out.samples] == [[1.0] * 4, [0.0] * 4]
    eval_data = write_jsonl(tmp_path / "e.jsonl", [{"input": "x", "label": "a"}])
    args.eval_prompt_data = ["e", eval_data]
    assert generate_rollout(args, 0, None, evaluation=True).data["e"]["rewards"] == [1.0]
    model = load_function(str(rm_file))
    assert model.built == ["rm"]  # once per process
    assert sorted(model.calls) == [["q0"] * 4, ["q1"] * 4, ["x"]]
