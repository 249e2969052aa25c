"""The step-0 preflight's checks on the numbers it is given (the runs that reach it: test_train_driver.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from temper.cluster.preflight import BF16_GAP, FP32_GAP, Preflight, PreflightError

GOOD = {"ppo_kl": 0.0, "pg_clipfrac": 0.0, "train_rollout_logprob_abs_diff": 2e-6, "loss": 0.1}


def preflight(fp32: bool = True, skip: bool = False, limit: float | None = None, **flags) -> Preflight:
    cfg = SimpleNamespace(
        skip_preflight=skip, preflight_max_logprob_diff=limit, use_rollout_logprobs=False, rollout_backend="builtin"
    )
    return Preflight.of(SimpleNamespace(**vars(cfg) | flags), fp32=fp32)


def test_thresholds_follow_the_precision_unless_given():
    assert preflight(fp32=True).max_logprob_diff == FP32_GAP
    assert preflight(fp32=False).max_logprob_diff == BF16_GAP
    assert BF16_GAP > 2.8e-2  # the measured Qwen3-4B bf16 gap passes
    assert preflight(limit=0.5).max_logprob_diff == 0.5


def test_a_good_first_step_passes_once(capsys):
    check = preflight()
    assert check.wants_first_step
    check.first_step(GOOD)
    assert not check.wants_first_step
    out = capsys.readouterr().out
    assert out.startswith("preflight passed: engine weights not checked (no engines); first step ratio 1 (ppo_kl 0")


def test_bf16_gap_passes_on_gpu_and_fails_in_fp32():
    gpu_like = GOOD | {"train_rollout_logprob_abs_diff": 7e-3, "ppo_kl": 2e-4}  # recomputed old log-probs in bf16
    preflight(fp32=False).first_step(gpu_like)
    with pytest.raises(PreflightError) as failed:
        preflight(fp32=True).first_step(gpu_like)
    message = str(failed.value)
    assert "ratio is not 1" in message and "ppo_kl 0.0002" in message and "--skip-preflight" in message


def test_a_large_gap_stops_with_the_numbers_causes_and_the_way_on():
    with pytest.raises(PreflightError) as failed:
        preflight(fp32=False).first_step(GOOD | {"train_rollout_logprob_abs_diff": 0.8})
    message = str(failed.value)
    assert "Found: 0.8, above 0.1 (--preflight-max-logprob-diff" in message
    assert "--rollout-temperature" in message and message.endswith("--skip-preflight.")
    with pytest.raises(PreflightError, match="above 0.1"):
        preflight(fp32=False).first_step(GOOD | {"train_rollout_logprob_abs_diff": float("nan")})


def test_old_log_probs_from_the_engine_leave_the_ratio_to_the_gap_check(capsys):
    engine_old = GOOD | {"ppo_kl": 3e-3, "train_rollout_logprob_abs_diff": 7e-3}  # old = engine's, bf16
    preflight(fp32=False, use_rollout_logprobs=True).first_step(engine_old)
    assert "ratio not checked (--use-rollout-logprobs" in capsys.readouterr().out
    with pytest.raises(PreflightError, match="ratio is not 1"):
        preflight(fp32=False).first_step(engine_old)


def test_clipped_tokens_on_the_first_step_fail():
    with pytest.raises(PreflightError, match="pg_clipfrac 0.25"):
        preflight().first_step(GOOD | {"pg_clipfrac": 0.25})


def test_losses_without_a_ratio_or_engine_log_probs_are_not_checked(capsys):
    preflight().first_step({"loss": 0.3})  # sft loss, samples without log-probs
    out = capsys.readouterr().out
    assert "ratio not checked" in out and "gap not checked" in out


def test_the_first_weight_check_failure_explains_itself():
    check = preflight()

    def differ() -> int:
        raise RuntimeError("--check-weight-update-equal: 1 engine tensors differ: http://e model.x: max |diff| 0.5")

    with pytest.raises(PreflightError) as failed:
        check.weights(differ, version=0)
    message = str(failed.value)
    assert message.startswith("preflight: the engines' weights differ from the trainer's after the first weight sync")
    assert "model.x: max |diff| 0.5" in message and "--skip-preflight" in message
    with pytest.raises(RuntimeError, match="--check-weight-update-equal") as later:  # later syncs: the flag's own error
        check.weights(differ, version=1)
    assert not isinstance(later.value, PreflightError)


def test_a_threshold_must_be_positive():
    from temper.command_line import parse_config
    from temper.config import ConfigError

    base = ["--rollout-batch-size", "2", "--num-rollout", "1"]
    assert parse_config([*base, "--preflight-max-logprob-diff", "0.05"]).preflight_max_logprob_diff == 0.05
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="--preflight-max-logprob-diff must be a positive number"):
            parse_config([*base, "--preflight-max-logprob-diff", bad])


def test_the_first_weight_check_passes_and_is_reported(capsys):
    check = preflight()
    assert check.weights(lambda: 24, version=0) == 24 and not check.wants_weights
    check.first_step(GOOD)
    assert "engine weights equal the trainer's after the first sync (24 tensors compared, every element)" in capsys.readouterr().out


def test_sglang_engines_weights_are_checked_only_on_request(capsys):
    check = preflight(rollout_backend="sglang")
    assert not check.wants_weights
    check.first_step(GOOD)
    assert "engine weights not checked (--rollout-backend sglang" in capsys.readouterr().out


def test_skip_preflight_checks_nothing():
    check = preflight(skip=True)
    assert not check.wants_weights and not check.wants_first_step
    assert check.weights(lambda: 7, version=0) == 7
