"""Bad plug points: a missing file or module, no such function, a wrong signature, a function that raises,
one that returns the wrong type. Trainer plug points are loaded and their signatures checked when the
command line is parsed (before Ray); rollout plug points are called here as the rollout calls them. Each
error names the flag and the path; one raised by the user's code keeps its type and gets a note saying
which plug point and which sample."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
import torch
from bad_input_helpers import BASE, assert_message, driver_checks

from temper.command_line import parse_config
from temper.data import PluginError
from temper.rollout.generate_and_rm import call_generate, is_list_style
from temper.rollout.plugins import load_plugin
from temper.rollout.rewards import async_rm, batched_async_rm
from temper.types import RolloutBatch, Sample

ADVANTAGE = "--custom-advantage-function-path"


@pytest.fixture
def plugin(write):
    """plugin(source) -> path of a file holding the dedented `source`."""
    return lambda source, name="plug.py": write(name, textwrap.dedent(source))


def rollout_args(*flags: str):
    return parse_config([*BASE, *flags])


def reward(args, sample: Sample):
    return asyncio.run(async_rm(args, sample))


# -- trainer plug points: checked when the command line is parsed ------------------------------------


def test_plug_trainer_missing_file(refused, model, tmp_path):
    refused([*BASE, "--hf-checkpoint", model, ADVANTAGE, str(tmp_path / "nowhere.py")],
            f"{ADVANTAGE} '{tmp_path}/nowhere.py': file {tmp_path}/nowhere.py not found",
            "it must be slime's fn(args, rollout_data)")


def test_plug_trainer_wrong_signature(refused, model, plugin):
    path = plugin("def advantages(args):\n    pass\n")
    refused([*BASE, "--hf-checkpoint", model, ADVANTAGE, f"{path}:advantages"],
            f"{ADVANTAGE} '{path}:advantages': advantages(args) cannot be called so: too many positional arguments; "
            "expected slime's signature fn(args, rollout_data)")


def test_plug_missing_module(refused, model):
    refused([*BASE, "--hf-checkpoint", model, "--loss-type", "custom_loss", "--custom-loss-function-path",
             "nowhere_pkg.losses.my_loss"],
            "--custom-loss-function-path 'nowhere_pkg.losses.my_loss': no module named 'nowhere_pkg'",
            "or use 'path/to/file.py:function'")


def test_plug_no_such_function(refused, model, plugin):
    path = plugin("def advantages(args, rollout_data):\n    pass\n")
    refused([*BASE, "--hf-checkpoint", model, ADVANTAGE, f"{path}:advantage"],
            "has no 'advantage'; callables there: ['advantages']")


def test_plug_bare_file_with_two_functions(refused, model, plugin):
    path = plugin("def a(args, rollout_data):\n    pass\n\ndef b(args, rollout_data):\n    pass\n")
    refused([*BASE, "--hf-checkpoint", model, ADVANTAGE, path],
            "a bare file path names the file's one public function or class, but it defines 2 public functions or "
            "classes (a, b); name one as", ":NAME'")


def test_plug_not_callable(refused, model, plugin):
    path = plugin("LIMIT = 3\n")
    refused([*BASE, "--hf-checkpoint", model, ADVANTAGE, f"{path}:LIMIT"],
            "'LIMIT' is a int, expected a function or class")


def test_plug_import_raises(model, plugin):
    """An error in the plug-in file itself is the user's (its traceback points into the file); a note
    says which file and flag."""
    path = plugin("import json\nTABLE = json.loads('{oops')\n\ndef advantages(args, rollout_data):\n    pass\n")
    with pytest.raises(ValueError, match="Expecting property name") as caught:
        driver_checks([*BASE, "--hf-checkpoint", model, ADVANTAGE, f"{path}:advantages"])
    assert f"raised while importing {path} for {ADVANTAGE} '{path}:advantages'" in caught.value.__notes__


def test_plug_trainer_wrong_result(model, plugin, single_rank_group):
    """A custom loss that returns a float: the flag and what it must return, at the first call."""
    from temper.train import Actor
    from temper.train.plugins import PluginResultError

    path = plugin("def loss(args, batch, logits, sum_of_sample_mean):\n    return 0.5, {}\n")
    cfg = parse_config(["--hf-checkpoint", model, "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
                        "--num-rollout", "1", "--micro-batch-size", "4", "--loss-type", "custom_loss",
                        "--custom-loss-function-path", f"{path}:loss"], check_shape=False)
    g = torch.Generator().manual_seed(0)
    batch = RolloutBatch(
        tokens=[torch.randint(0, 500, (8,), generator=g) for _ in range(4)], response_lengths=[4] * 4,
        loss_masks=[torch.ones(4)] * 4, rewards=torch.tensor([1.0, -1.0, 1.0, -1.0]),
        raw_rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]), group_indices=[0, 0, 1, 1], sample_indices=[0, 1, 2, 3],
    )  # fmt: skip
    with pytest.raises(PluginResultError, match="--custom-loss-function-path: the returned loss is a float, "
                                                "expected a scalar tensor"):
        Actor(cfg).train(0, batch)


# -- rollout plug points: loaded before Ray starts ------------------------------------------------------


@pytest.mark.parametrize("flag", ["--custom-generate-function-path", "--rollout-function-path", "--custom-rm-path",
                                  "--dynamic-sampling-filter-path", "--custom-reward-post-process-path"])
def test_plug_rollout_missing_file_before_ray(tmp_path, flag, model):
    missing = tmp_path / "nowhere.py"
    with pytest.raises(PluginError) as caught:
        driver_checks([*BASE, "--hf-checkpoint", model, flag, f"{missing}:fn"])
    assert_message(caught.value, f"{flag} '{missing}:fn': file {missing} not found")


# -- reward functions: called as the rollout calls them ----------------------------------------------


def test_plug_reward_missing_file(tmp_path):
    with pytest.raises(PluginError, match=f"--custom-rm-path '{tmp_path}/rm.py': file {tmp_path}/rm.py not found"):
        reward(rollout_args("--custom-rm-path", str(tmp_path / "rm.py")), Sample(index=7))


def test_plug_reward_wrong_signature(plugin):
    path = plugin("def rm(sample):\n    return 1.0\n")
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given") as caught:
        reward(rollout_args("--custom-rm-path", f"{path}:rm"), Sample(index=7))
    assert caught.value.__notes__ == [f"raised by the --custom-rm-path function '{path}:rm' on sample 7"]


def test_plug_reward_raises(plugin):
    path = plugin("def rm(args, sample):\n    return {'yes': 1.0}[sample.response]\n")
    with pytest.raises(KeyError, match="maybe") as caught:
        reward(rollout_args("--custom-rm-path", f"{path}:rm"), Sample(index=7, response="maybe"))
    assert caught.value.__notes__ == [f"raised by the --custom-rm-path function '{path}:rm' on sample 7"]


@pytest.mark.parametrize("value, shown", [
    pytest.param("'0.5'", "str '0.5'", id="plug-reward-returns-text"),
    pytest.param("None", "NoneType None", id="plug-reward-returns-none"),
    pytest.param("float('nan')", "float nan", id="plug-reward-returns-nan"),
    pytest.param("[1.0]", "list [1.0]", id="plug-reward-returns-list"),
])
def test_each_reward_result_case(plugin, said, value, shown):
    path = plugin(f"async def rm(args, sample):\n    return {value}\n")
    with pytest.raises(TypeError) as caught:
        reward(rollout_args("--custom-rm-path", f"{path}:rm"), Sample(index=7))
    said(caught.value, f"--custom-rm-path '{path}:rm' returned {shown} for sample 7; a reward function must return "
                       f"a number (not NaN) or a dict of them")


def test_plug_group_reward_wrong_length(plugin):
    path = plugin("def rm(args, samples):\n    return [1.0]\n")
    args = rollout_args("--custom-rm-path", f"{path}:rm", "--group-rm")
    with pytest.raises(ValueError, match="returned 1 rewards for a group of 2 samples; return one per sample"):
        asyncio.run(batched_async_rm(args, [Sample(index=0), Sample(index=1)]))


def test_plug_group_reward_wrong_type(plugin):
    path = plugin("def rm(args, samples):\n    return ['good', 'bad']\n")
    args = rollout_args("--custom-rm-path", f"{path}:rm", "--group-rm")
    with pytest.raises(TypeError, match=f"--group-rm reward function '{path}:rm' returned str 'good' for sample 0"):
        asyncio.run(batched_async_rm(args, [Sample(index=0), Sample(index=1)]))


def test_plug_unknown_rm_type():
    with pytest.raises(ValueError, match="unknown --rm-type 'maths' \\(sample 7\\); valid: math, deepscaler"):
        reward(rollout_args("--rm-type", "maths"), Sample(index=7))


# -- generate functions: checked when the rollout manager starts, called as the rollout calls them ----


def test_plug_generate_wrong_signature(plugin):
    path = plugin("async def gen(args, sample):\n    return sample\n")
    with pytest.raises(PluginError) as caught:
        is_list_style(load_plugin(f"{path}:gen", "--custom-generate-function-path"), f"{path}:gen")
    message = str(caught.value)
    assert message.startswith(f"--custom-generate-function-path '{path}:gen': gen(args, sample) is neither accepted")
    assert "generate(args, sample, sampling_params" in message and "custom_generate(args, samples" in message


def test_plug_generate_wrong_result(plugin):
    path = plugin("async def gen(args, sample, sampling_params):\n    return {'text': 'hi'}\n")
    args = rollout_args("--custom-generate-function-path", f"{path}:gen")
    with pytest.raises(TypeError, match="the generate function 'gen' must return a Sample or a non-empty list of "
                                        "Samples, got {'text': 'hi'}"):
        asyncio.run(call_generate(args, Sample(index=3, prompt="hi"), {}, False))


def test_plug_rollout_function_missing_module():
    with pytest.raises(PluginError, match="--rollout-function-path 'my_rollouts.generate': no module named "
                                          "'my_rollouts'"):
        load_plugin("my_rollouts.generate", flag="--rollout-function-path")
