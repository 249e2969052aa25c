"""Config groups, flat access, and the cross-field rules of temper.config_rules."""

import pickle

import pytest

from temper.command_line import parse_config
from temper.config import Config, ConfigError


def cfg_of(*flags: str) -> Config:
    return parse_config(["--num-rollout", "1", *flags])


def test_flat_access_reaches_groups():
    cfg = Config()
    cfg.rollout_batch_size = 16
    assert cfg.data.rollout_batch_size == 16
    assert cfg.rollout_batch_size == 16
    assert cfg.grpo_std_normalization is True  # a property of the algorithm group
    with pytest.raises(AttributeError, match="no field 'not_a_flag'"):
        _ = cfg.not_a_flag


def test_config_pickles():
    cfg = cfg_of("--rollout-batch-size", "2")
    assert pickle.loads(pickle.dumps(cfg)).to_flat() == cfg.to_flat()


@pytest.mark.parametrize(
    "flags, gbs, steps",
    [
        (["--rollout-batch-size", "8", "--n-samples-per-prompt", "4"], 32, 1),
        (["--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--num-steps-per-rollout", "4"], 8, 4),
        (["--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--global-batch-size", "16"], 16, 2),
        (["--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--global-batch-size", "16", "--num-steps-per-rollout", "2"], 16, 2),
    ],
)
def test_batch_arithmetic_derives_the_missing_one(flags, gbs, steps):
    cfg = cfg_of(*flags)
    assert (cfg.global_batch_size, cfg.num_steps_per_rollout) == (gbs, steps)


def test_batch_arithmetic_errors_show_the_numbers():
    with pytest.raises(ConfigError) as e:
        cfg_of("--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--global-batch-size", "16", "--num-steps-per-rollout", "3")
    assert str(e.value) == (
        "--rollout-batch-size 8 x --n-samples-per-prompt 4 = 32 but --global-batch-size 16 x --num-steps-per-rollout 3 "
        "= 48; they must be equal (drop one of the last two and it is derived)"
    )
    with pytest.raises(ConfigError, match="= 32 samples do not split into --num-steps-per-rollout 3"):
        cfg_of("--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--num-steps-per-rollout", "3")
    with pytest.raises(ConfigError, match="--rollout-batch-size is required"):
        cfg_of()
    with pytest.raises(ConfigError, match="not a multiple of --micro-batch-size 3"):
        cfg_of("--rollout-batch-size", "4", "--micro-batch-size", "3")
    with pytest.raises(ConfigError, match="needs --max-tokens-per-gpu"):
        cfg_of("--rollout-batch-size", "4", "--use-dynamic-batch-size")


def test_num_rollout_or_epoch_required():
    with pytest.raises(ConfigError, match="--num-rollout .* or --num-epoch"):
        parse_config(["--rollout-batch-size", "4"])
    assert parse_config(["--rollout-batch-size", "4", "--num-epoch", "2"]).num_epoch == 2


def test_gpu_counts():
    with pytest.raises(ConfigError, match="--actor-num-gpus-per-node 16 exceeds --num-gpus-per-node 8"):
        cfg_of("--rollout-batch-size", "4", "--actor-num-gpus-per-node", "16")
    with pytest.raises(ConfigError, match="--rollout-num-gpus 3 is not a multiple of --rollout-num-gpus-per-engine 2"):
        cfg_of("--rollout-batch-size", "4", "--rollout-num-gpus", "3", "--rollout-num-gpus-per-engine", "2")
    with pytest.raises(ConfigError, match="--colocate shares GPUs"):
        cfg_of("--rollout-batch-size", "4", "--colocate", "--actor-num-gpus-per-node", "4", "--rollout-num-gpus", "2")
    cfg = cfg_of("--rollout-batch-size", "4", "--colocate", "--actor-num-nodes", "2", "--actor-num-gpus-per-node", "4")
    assert cfg.rollout_num_gpus == 8


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tensor-model-parallel-size", "2"], "--tensor-model-parallel-size is honoured by the Megatron backend only"),
        (["--sequence-parallel"], "--sequence-parallel is honoured by the Megatron backend only"),
        (["--train-backend", "megatron"], "megatron is not available"),
        (["--use-kl-loss", "--kl-loss-coef", "0.1", "--kl-coef", "0.1"], "exclude each other"),
        (["--use-tis", "--use-rollout-logprobs"], "cannot be combined with --use-rollout-logprobs"),
        (["--advantage-estimator", "reinforce_plus_plus"], "requires --normalize-advantages"),
        (["--eps-clip-c", "0.5"], "must be > 1"),
        (["--rollout-temperature", "0"], "must be > 0"),
        (["--save-interval", "5"], "needs --save DIR"),
        (["--eval-interval", "5"], "needs --eval-prompt-data"),
        (["--eval-prompt-data", "a", "b", "c"], "NAME PATH pairs"),
        (["--debug-rollout-only", "--debug-train-only"], "exclude each other"),
        (["--loss-type", "custom_loss"], "needs --custom-loss-function-path"),
        (["--over-sampling-batch-size", "2"], "must be >= --rollout-batch-size 4"),
    ],
)
def test_incompatible_options(flags, message):
    with pytest.raises(ConfigError) as e:
        cfg_of("--rollout-batch-size", "4", *flags)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_derived_defaults():
    cfg = cfg_of("--rollout-batch-size", "4", "--rollout-max-context-len", "1024", "--eps-clip", "0.3")
    assert cfg.rollout_max_prompt_len == 1023
    assert cfg.eps_clip_high == 0.3
    assert cfg.over_sampling_batch_size == 4
    assert cfg.disable_grpo_std_normalization is True  # n_samples_per_prompt == 1, as slime does
    assert cfg_of("--rollout-batch-size", "4", "--n-samples-per-prompt", "2").grpo_std_normalization is True
    assert cfg_of("--rollout-batch-size", "4", "--load-debug-rollout-data", "x_{rollout_id}.pt").debug_train_only
    assert cfg_of("--rollout-batch-size", "4", "--advantage-estimator", "ppo").use_critic


def test_eval_datasets():
    cfg = cfg_of("--rollout-batch-size", "4", "--eval-prompt-data", "aime", "a.jsonl", "gsm8k", "g.parquet@[0:100]")
    assert cfg.eval_datasets == {"aime": "a.jsonl", "gsm8k": "g.parquet@[0:100]"}
    assert cfg_of("--rollout-batch-size", "4", "--eval-prompt-data", "dir/math500.jsonl").eval_datasets == {
        "math500": "dir/math500.jsonl"
    }
