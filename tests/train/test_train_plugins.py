"""Contract tests of the trainer's plug points (slime's signatures): a user function written to a temporary
file is loaded at start-up, really called, and its result really used; a broken one stops the run at
start-up naming the flag and the signature, and a wrong result names the flag at the call."""

import json
import re
import textwrap

import pytest
import torch
from train_helpers import make_cfg, toy_batch

from temper.data import PluginError
from temper.quickstart import load_driver
from temper.train import Actor
from temper.train.plugins import PluginResultError

ADVANTAGE = """
    import json
    from pathlib import Path

    import torch


    def constant_advantages(args, rollout_data):
        Path(__file__).with_suffix(".seen").write_text(json.dumps({
            "keys": sorted(rollout_data),
            "old_log_probs": rollout_data["log_probs"] is not None,
            "args": args.advantage_estimator,
        }))
        rollout_data["advantages"] = [torch.full((n,), 2.0) for n in rollout_data["response_lengths"]]
        rollout_data["returns"] = [torch.zeros(n) for n in rollout_data["response_lengths"]]
"""

DR_GRPO_REDUCER = """
    import torch

    CONSTANT = 32.0


    def dr_grpo_reducer(total_lengths, response_lengths, loss_masks, calculate_per_token_loss):
        def reduce(x):
            pieces = torch.split(x, response_lengths)
            return sum((p * m).sum() / CONSTANT for p, m in zip(pieces, loss_masks))
        return reduce
"""

TIS = """
    import torch


    def reject_first_token(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths,
                           response_lengths, **kwargs):
        masks = [m.clone() for m in loss_masks]
        for m in masks:
            m[0] = 0.0
        metrics = {"seven": torch.full_like(pg_loss, 7.0), "samples": torch.tensor(float(len(masks)))}
        return pg_loss * 3.0, masks, metrics
"""

NLL_LOSS = """
    import torch


    def nll_loss(args, batch, logits, sum_of_sample_mean):
        log_probs = torch.log_softmax(logits[0] / args.rollout_temperature, dim=-1)
        pieces, end = [], 0
        for tokens, total, response in zip(batch["unconcat_tokens"], batch["total_lengths"], batch["response_lengths"]):
            end += total
            rows = log_probs[end - response - 1 : end - 1]
            pieces.append(rows.gather(-1, tokens[-response:, None]).squeeze(-1))
        loss = -sum_of_sample_mean(torch.cat(pieces))
        return loss, {"nll": loss.detach()}
"""


@pytest.fixture
def plugin(tmp_path):
    """Write `source` to tmp_path/NAME.py; returns the file's path."""

    def write(name: str, source: str) -> str:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


def grpo_pg_loss(batch, per_sample_weight) -> float:
    """The first on-policy step's pg_loss by hand: ratio 1, so pg_t = −A_i = −reward_i on trained tokens."""
    return sum(-r * w for r, w in zip(batch.rewards.tolist(), per_sample_weight)) / len(batch)


# -- --custom-advantage-function-path ------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["file.py:fn", "file.py", "module.fn"])
def test_custom_advantage_sets_the_advantages_the_loss_uses(qwen3_dir, plugin, monkeypatch, spelling, tmp_path):
    file = plugin("my_advantages", ADVANTAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = {
        "file.py:fn": f"{file}:constant_advantages",
        "file.py": file,
        "module.fn": "my_advantages.constant_advantages",
    }
    actor = Actor(make_cfg(qwen3_dir, "--custom-advantage-function-path", path[spelling]))
    data = actor.prepare(0, toy_batch(8))
    assert all(torch.equal(a, torch.full_like(a, 2.0)) for a in data.advantages)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in data.returns)
    metrics = actor.update(data)
    assert metrics["pg_loss"] == pytest.approx(-2.0)  # ratio 1 on the first step: −mean A
    seen = json.loads((tmp_path / "my_advantages.seen").read_text())
    assert seen["old_log_probs"] and seen["args"] == "grpo"
    slimes = {"rewards", "loss_masks", "response_lengths", "total_lengths", "log_probs", "kl", "tokens"}
    assert slimes <= set(seen["keys"])


def test_custom_advantages_are_whitened_with_normalize_advantages(qwen3_dir, plugin):
    path = plugin("adv", ADVANTAGE)
    metrics = Actor(make_cfg(qwen3_dir, "--normalize-advantages", custom_advantage_function_path=path)).train(
        0, toy_batch(8)
    )
    assert metrics["pg_loss"] == pytest.approx(0.0, abs=1e-6)  # constant advantages whiten to 0


# -- --custom-pg-loss-reducer-function-path -----------------------------------------------------------


@pytest.mark.parametrize("per_token", [False, True])
def test_dr_grpo_reducer_gives_the_constant_denominator(qwen3_dir, plugin, per_token):
    """slime's reducer returns Σ_i Σ_t m·x / 32 over a micro-batch; the step divides by its samples (or its
    Σ max(trained tokens, 1)): pg_loss = Σ_i (−A_i · trained_i) / 32 / B."""
    path = plugin("reducer", DR_GRPO_REDUCER)
    batch = toy_batch(8)
    cfg = make_cfg(
        qwen3_dir, custom_pg_loss_reducer_function_path=path, calculate_per_token_loss=per_token, micro_batch_size=2
    )
    metrics = Actor(cfg).train(0, batch)
    trained = [m.sum().item() for m in batch.loss_masks]
    numerator = sum(-r * n / 32 for r, n in zip(batch.rewards.tolist(), trained))
    denominator = sum(max(n, 1) for n in trained) if per_token else len(batch)
    assert metrics["pg_loss"] == pytest.approx(numerator / denominator, rel=1e-5)
    default = Actor(make_cfg(qwen3_dir, calculate_per_token_loss=per_token, micro_batch_size=2)).train(0, batch)
    assert metrics["pg_loss"] != pytest.approx(default["pg_loss"], rel=1e-3)


# -- --custom-tis-function-path -----------------------------------------------------------------------


def test_custom_tis_reweights_and_rejects_tokens(qwen3_dir, plugin):
    """pg_loss × 3 with each sample's first token rejected: the numerator loses it, the denominator keeps it."""
    path = plugin("tis", TIS)
    batch = toy_batch(8, with_rollout_log_probs=True)
    metrics = Actor(make_cfg(qwen3_dir, "--use-tis", custom_tis_function_path=path, micro_batch_size=2)).train(0, batch)
    kept = [(m[1:].sum() / m.sum()).item() for m in batch.loss_masks]
    assert metrics["pg_loss"] == pytest.approx(grpo_pg_loss(batch, [3 * k for k in kept]), rel=1e-5)
    assert metrics["seven"] == pytest.approx(7.0) and metrics["samples"] == pytest.approx(2.0)


def test_slimes_builtin_tis_names_stay_builtin(qwen3_dir):
    icepop = "slime.backends.megatron_utils.loss.icepop_function"
    actor = Actor(make_cfg(qwen3_dir, "--use-tis", custom_tis_function_path=icepop))
    assert actor.plugins.tis is None and actor.loss_config.tis_mode == "icepop"


# -- --loss-type custom_loss --------------------------------------------------------------------------


@pytest.mark.parametrize("per_token", [False, True])
def test_custom_loss_sees_slimes_batch_and_logits(qwen3_dir, plugin, per_token):
    """A negative log-likelihood written against slime's batch layout and packed logits equals temper's
    built-in SFT loss on the same batch and weights."""
    path = plugin("loss", NLL_LOSS)
    batch = toy_batch(8)
    flags = dict(calculate_per_token_loss=per_token, micro_batch_size=2)
    custom = Actor(make_cfg(qwen3_dir, "--loss-type", "custom_loss", custom_loss_function_path=path, **flags))
    metrics = custom.train(0, batch)
    want = Actor(make_cfg(qwen3_dir, "--loss-type", "sft_loss", **flags)).train(0, batch)
    assert metrics["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert metrics["nll"] == pytest.approx(want["loss"], rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)


# -- broken plug points ---------------------------------------------------------------------------------

SIGNATURES = {
    "--custom-advantage-function-path": ("def f(args):\n    pass\n", "fn(args, rollout_data)"),
    "--custom-pg-loss-reducer-function-path": ("def f(x):\n    pass\n", "fn(total_lengths, response_lengths"),
    "--custom-tis-function-path": ("def f(args, pg_loss):\n    pass\n", "fn(args, *, pg_loss, train_log_probs"),
    "--custom-loss-function-path": ("def f(args, batch, logits):\n    pass\n", "fn(args, batch, logits, sum_of_s"),
}
NEEDS = {"--custom-tis-function-path": ["--use-tis"], "--custom-loss-function-path": ["--loss-type", "custom_loss"]}


@pytest.mark.parametrize("flag", sorted(SIGNATURES))
def test_missing_file_and_wrong_signature_fail_at_parse_time(qwen3_dir, plugin, flag):
    source, signature = SIGNATURES[flag]
    missing = f"{flag} .*nowhere.py.*not found; it must be slime's " + re.escape(signature)
    with pytest.raises(PluginError, match=missing):
        make_cfg(qwen3_dir, flag, "/nowhere/nowhere.py:f", *NEEDS.get(flag, []))
    path = plugin("wrong", source)
    with pytest.raises(PluginError, match=f"{flag} .*expected slime's signature " + re.escape(signature)):
        make_cfg(qwen3_dir, flag, f"{path}:f", *NEEDS.get(flag, []))


def test_a_broken_plug_point_stops_train_py_before_ray(tmp_path):
    import ray

    from temper.testing import tiny_model_dir

    argv = ["--hf-checkpoint", str(tiny_model_dir("qwen3")), "--rollout-batch-size", "1", "--num-rollout", "1"]
    argv += ["--prompt-data", str(tmp_path / "none.jsonl"), "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        load_driver("train").main([*argv, "--custom-advantage-function-path", str(tmp_path / "missing.py")])
    assert str(stop.value.code).startswith("train.py: error: --custom-advantage-function-path")
    assert not ray.is_initialized() and not (tmp_path / "run").exists()


def test_a_relative_file_path_is_made_absolute_for_the_workers(qwen3_dir, plugin, tmp_path, monkeypatch):
    plugin("adv", ADVANTAGE)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(qwen3_dir, "--custom-advantage-function-path", "adv.py:constant_advantages")
    assert cfg.custom_advantage_function_path == f"{tmp_path / 'adv.py'}:constant_advantages"


def test_plug_point_paths_need_their_switch(qwen3_dir, plugin):
    from temper.config import ConfigError

    path = plugin("tis", TIS)
    with pytest.raises(ConfigError, match="--custom-tis-function-path is applied with --use-tis"):
        make_cfg(qwen3_dir, "--custom-tis-function-path", path)
    with pytest.raises(ConfigError, match="--custom-loss-function-path is the loss of --loss-type custom_loss"):
        make_cfg(qwen3_dir, "--custom-loss-function-path", plugin("loss", NLL_LOSS))


WRONG_RESULTS = {
    "advantage": (
        "def f(args, rollout_data):\n    rollout_data['advantages'] = [1.0]\n    rollout_data['returns'] = [1.0]\n",
        ["--custom-advantage-function-path"],
        r"--custom-advantage-function-path: rollout_data\['advantages'\] is a list of 1 .*expected a list of 8 tensors",
    ),
    "reducer": (
        "def f(total_lengths, response_lengths, loss_masks, per_token):\n    return lambda x: 1.5\n",
        ["--custom-pg-loss-reducer-function-path"],
        "--custom-pg-loss-reducer-function-path: the reducer's value is a float, expected a scalar tensor",
    ),
    "tis": (
        "def f(args, **kwargs):\n    return kwargs['pg_loss'], kwargs['loss_masks']\n",
        ["--custom-tis-function-path", "--use-tis"],
        "--custom-tis-function-path: it returned a tuple of 2",
    ),
    "loss": (
        "def f(args, batch, logits, reduce):\n    return 0.5, {}\n",
        ["--custom-loss-function-path", "--loss-type", "custom_loss"],
        "--custom-loss-function-path: the returned loss is a float, expected a scalar tensor",
    ),
}


@pytest.mark.parametrize("name", sorted(WRONG_RESULTS))
def test_a_wrong_result_names_the_flag_at_the_call(qwen3_dir, plugin, name):
    source, (flag, *switch), message = WRONG_RESULTS[name]
    actor = Actor(make_cfg(qwen3_dir, flag, f"{plugin(name, source)}:f", *switch))
    with pytest.raises(PluginResultError, match=message):
        actor.train(0, toy_batch(8, with_rollout_log_probs=True))
