"""The actor's training step: on-policy first step, full-batch aggregation, NaN guard, GRPO and SFT runs."""

import logging

import pytest
import torch
from torch.distributed.tensor import DTensor
from train_helpers import make_cfg, params_of, sample_batch, sync_weights, toy_batch
from transformers import AutoModelForCausalLM

import temper.train.actor as actor_module
from temper.algo import PolicyLossConfig, policy_loss_function
from temper.train import Actor
from temper.train.hf_model import load_causal_lm, policy_log_probs
from temper.train.packing import pack
from temper.train.parallelize import hf_name
from temper.train.train_data import pad
from temper.train.trainable import TrainableModel


@pytest.fixture
def policy_loss_calls(monkeypatch):
    """Every (log_probs, old_log_probs, loss_mask) the actor passes to policy_loss_function."""
    calls = []

    def spy(log_probs, old_log_probs, advantages, loss_mask, config, **kwargs):
        calls.append((log_probs.detach().clone(), old_log_probs.detach().clone(), loss_mask.clone()))
        return policy_loss_function(log_probs, old_log_probs, advantages, loss_mask, config, **kwargs)

    monkeypatch.setattr(actor_module, "policy_loss_function", spy)
    return calls


@pytest.fixture
def grads_before_step(monkeypatch):
    """The full gradient of every parameter (HF name) just before each optimizer step."""
    captured = []
    original = TrainableModel._clip_grad_norm

    def spy(self):
        captured.append(
            {
                hf_name(n): (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
                for n, p in self.model.named_parameters()
            }
        )
        return original(self)

    monkeypatch.setattr(TrainableModel, "_clip_grad_norm", spy)
    return captured


@pytest.mark.parametrize("num_steps", [1, 2])
def test_first_step_of_a_rollout_is_exactly_on_policy(qwen3_dir, policy_loss_calls, num_steps):
    """Step 1: ratio == 1 and ppo_kl == 0 exactly; with ref == actor, kl == 0 exactly.

    One step per rollout skips the old-log-prob pass (old = detached current); two steps recompute
    them in a forward-only pass with the same packing, which must reproduce the training forward bit
    for bit.
    """
    cfg = make_cfg(qwen3_dir, num_steps_per_rollout=num_steps, use_kl_loss=True, kl_loss_coef=0.5, micro_batch_size=2)
    actor = Actor(cfg)
    metrics = actor.train(0, toy_batch(8))
    first = actor.step_metrics[0]
    assert first["ppo_kl"] == 0.0 and first["kl_loss"] == 0.0 and first["pg_clipfrac"] == 0.0
    micro_batches_per_step = len(policy_loss_calls) // num_steps
    for log_probs, old, mask in policy_loss_calls[:micro_batches_per_step]:
        ratio = torch.exp(log_probs - old)[mask.bool()]
        assert torch.equal(ratio, torch.ones_like(ratio))
    if num_steps == 2:  # the second step sees the first step's update
        assert actor.step_metrics[1]["ppo_kl"] != 0.0 and actor.step_metrics[1]["kl_loss"] != 0.0
    step_samples = toy_batch(8).loss_masks[: 8 // num_steps]
    assert first["tokens"] == sum(m.sum() for m in step_samples).item()
    assert metrics["grad_norm"] > 0


def full_batch_step(path, batch, cfg):
    """The step computed without micro-batches: one loss over the whole padded batch (temper.algo)."""
    model = load_causal_lm(path, torch.float32)
    per_sample = []
    for i in range(len(batch)):
        log_probs, entropy = policy_log_probs(
            model, pack(batch.tokens, batch.response_lengths, [i]), temperature=1.0, with_entropy=True
        )
        per_sample.append((log_probs, entropy))
    log_probs = torch.nn.utils.rnn.pad_sequence([lp for lp, _ in per_sample], batch_first=True)
    entropy = torch.nn.utils.rnn.pad_sequence([e for _, e in per_sample], batch_first=True)
    advantages = pad([torch.full((r,), float(a)) for r, a in zip(batch.response_lengths, batch.rewards)])
    config = PolicyLossConfig(
        use_kl_loss=True, kl_loss_coef=0.3, entropy_coef=0.01, calculate_per_token_loss=cfg.calculate_per_token_loss
    )
    loss, _ = policy_loss_function(
        log_probs,
        log_probs.detach(),
        advantages,
        pad(batch.loss_masks),
        config,
        ref_log_probs=log_probs.detach() - 0.0,
        entropy=entropy,
    )
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize(
    "batching",
    [dict(micro_batch_size=1), dict(micro_batch_size=8), dict(use_dynamic_batch_size=True, max_tokens_per_gpu=30)],
)
def test_micro_batches_add_up_to_the_full_batch_loss_and_gradient(qwen3_dir, grads_before_step, per_token, batching):
    batch = toy_batch(8, seed=3, max_len=24)
    batch.loss_masks[5] = torch.zeros_like(batch.loss_masks[5])  # a removed sample still counts in the mean
    cfg = make_cfg(
        qwen3_dir,
        rollout_batch_size=4,
        use_kl_loss=True,
        kl_loss_coef=0.3,
        entropy_coef=0.01,
        calculate_per_token_loss=per_token,
        clip_grad=0,
        **batching,
    )
    metrics = Actor(cfg).train(0, batch)
    want_loss, want_grads = full_batch_step(qwen3_dir, batch, cfg)
    assert metrics["loss"] == pytest.approx(want_loss, abs=1e-6)
    for name, grad in want_grads.items():
        torch.testing.assert_close(grads_before_step[0][name], grad, rtol=0, atol=1e-5, msg=name)


def test_nan_gradients_skip_the_step_and_are_counted(qwen3_dir, caplog):
    actor = Actor(make_cfg(qwen3_dir, lr_warmup_iters=10))
    before = params_of(actor.model)
    poisoned = toy_batch(8)
    poisoned.rewards[2] = float("nan")
    with caplog.at_level(logging.WARNING, logger="temper.train"):
        metrics = actor.train(0, poisoned)
    assert metrics["skipped_steps"] == 1.0 and not torch.isfinite(torch.tensor(metrics["grad_norm"]))
    assert "skipped" in caplog.text
    assert all(torch.equal(before[n], t) for n, t in params_of(actor.model).items())
    assert actor.trainable.scheduler.num_steps == 0  # a skipped step does not advance the schedule
    metrics = actor.train(1, toy_batch(8, seed=1))
    assert metrics["skipped_steps"] == 1.0 and actor.trainable.scheduler.num_steps == 1
    assert any(not torch.equal(before[n], t) for n, t in params_of(actor.model).items())


def test_grpo_raises_the_reward_of_fresh_samples(qwen3_dir):
    """GRPO on a toy task (reward = share of response tokens with id < 64, ≈ 0.05 at random init):
    sampling on-policy from a plain HF model synced through the weight buckets, the mean reward rises
    to >= 0.5 within 8 rollouts. The trainer's log-probs match the sampler's to < 1e-5 every step."""
    cfg = make_cfg(
        qwen3_dir,
        rollout_batch_size=8,
        n_samples_per_prompt=4,
        lr=2e-2,
        num_rollout=8,
        use_dynamic_batch_size=True,
        max_tokens_per_gpu=512,
    )
    actor = Actor(cfg)
    sampler = AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 900, (4,), generator=g) for _ in range(8)]
    rewards = []
    for rollout_id in range(8):
        sync_weights(actor, sampler)
        batch = sample_batch(sampler, prompts, 4, 6, seed=rollout_id)
        rewards.append(batch.raw_rewards.mean().item())
        metrics = actor.train(rollout_id, batch)
        assert metrics["train_rollout_logprob_abs_diff"] < 1e-5
    assert rewards[0] <= 0.15
    assert max(rewards[-2:]) >= 0.5, rewards


def test_sft_loss_falls_on_a_fixed_batch(qwen3_dir):
    """--loss-type sft_loss: 6 steps at lr 1e-2 on 8 fixed sequences at least halve the NLL."""
    cfg = make_cfg(qwen3_dir, "--loss-type", "sft_loss", "--calculate-per-token-loss", lr=1e-2)
    actor = Actor(cfg)
    batch = toy_batch(8, seed=5)
    losses = [actor.train(r, batch)["loss"] for r in range(6)]
    assert actor.reference is None
    assert losses[0] == pytest.approx(-torch.log(torch.tensor(1 / 1024)).item(), rel=0.05)  # ≈ uniform at init
    assert losses[-1] <= 0.5 * losses[0], losses


def test_offload_is_bookkeeping_on_cpu(qwen3_dir):
    actor = Actor(make_cfg(qwen3_dir))
    actor.offload()
    assert actor.trainable.offloaded
    actor.onload()
    assert not actor.trainable.offloaded
    actor.train(0, toy_batch(8))


@pytest.mark.parametrize(
    "flags",
    [
        ["--advantage-estimator", "gspo"],
        ["--advantage-estimator", "cispo", "--eps-clip", "1.0", "--eps-clip-high", "4"],
        ["--advantage-estimator", "rloo"],
        ["--advantage-estimator", "reinforce_plus_plus", "--normalize-advantages", "--kl-coef", "0.05"],
        ["--advantage-estimator", "reinforce_plus_plus_baseline", "--normalize-advantages"],
        ["--use-tis", "--tis-clip", "1.5"],
        ["--use-tis", "--custom-tis-function-path", "slime.backends.megatron_utils.loss.icepop_function"],
    ],
)
def test_every_estimator_and_tis_mode_trains(qwen3_dir, flags):
    actor = Actor(make_cfg(qwen3_dir, *flags, num_steps_per_rollout=2, micro_batch_size=4))
    metrics = actor.train(0, toy_batch(8, with_rollout_log_probs=True))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert "train_rollout_logprob_abs_diff" in metrics
    assert ("tis" in metrics) == ("--use-tis" in flags)


def test_use_rollout_logprobs_makes_the_engine_the_old_policy(qwen3_dir, policy_loss_calls):
    batch = toy_batch(8, with_rollout_log_probs=True)
    metrics = Actor(make_cfg(qwen3_dir, "--use-rollout-logprobs", micro_batch_size=8)).train(0, batch)
    (log_probs, old, mask), *_ = policy_loss_calls
    want = pad(batch.rollout_log_probs, list(range(8)))
    assert torch.equal(old, want[:, : old.shape[1]])
    # as slime: the current log-probs against the engine's (old == engine would always read 0)
    diff = (log_probs - old).abs()[mask.bool()].mean().item()
    assert metrics["train_rollout_logprob_abs_diff"] == pytest.approx(diff, rel=1e-5) and diff > 0.1


def test_reference_follows_the_actor_every_ref_update_interval(qwen3_dir):
    actor = Actor(make_cfg(qwen3_dir, use_kl_loss=True, kl_loss_coef=0.1, ref_update_interval=1, lr=1e-2))
    actor.train(0, toy_batch(8))
    policy, reference = params_of(actor.model), params_of(actor.reference.model)
    assert all(torch.equal(policy[n], reference[n]) for n in policy)
    actor.train(1, toy_batch(8, seed=1))
    assert actor.step_metrics[0]["kl_loss"] == 0.0  # the reference was refreshed after rollout 0


def test_one_rank_keeps_layers_gathered_through_a_step_with_the_same_gradients(qwen3_dir, monkeypatch):
    """One rank: the layers stay gathered across a step's micro-batches and their gradients accumulate
    unsharded (memory_plan.keeps_gathered); the gradients equal FSDP's per-micro-batch reduction bit for
    bit, and every parameter is sharded again once the step is over."""
    import temper.train.trainable as trainable_module

    batch = toy_batch(8, seed=3, max_len=24)
    grads = {}
    for keep in (True, False):
        monkeypatch.setattr(trainable_module, "keeps_gathered", lambda world_size, params, keep=keep: keep)
        captured = []
        original = TrainableModel._clip_grad_norm

        def spy(self, captured=captured, original=original):
            captured.append({n: p.grad.full_tensor().clone() for n, p in self.model.named_parameters()})
            return original(self)

        monkeypatch.setattr(TrainableModel, "_clip_grad_norm", spy)
        actor = Actor(make_cfg(qwen3_dir, rollout_batch_size=4, micro_batch_size=1, clip_grad=0))
        assert actor.trainable.keep_gathered is keep
        actor.train(0, batch)
        assert all(isinstance(p, DTensor) for p in actor.trainable.model.parameters())
        grads[keep] = captured[0]
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[True].items():
        assert torch.equal(grad, grads[False][name]), name


def test_update_reports_this_rank_s_memory(qwen3_dir):
    """On CPU: the process's peak resident memory (no MFU: the peak FLOPs are known for GPUs only)."""
    metrics = Actor(make_cfg(qwen3_dir)).train(0, toy_batch(8))
    assert 0.05 < metrics["host_mem_peak_gib"] < 64 and "mfu" not in metrics


def test_peak_flops_by_device_name():
    from temper.train.actor import peak_bf16_flops

    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA H20") == 148e12 and peak_bf16_flops("Tesla T4") is None


def test_mfu_counts_the_experts_a_token_runs_through():
    """The Actor's `mfu`: 6 x active parameters x tokens; a Qwen3-MoE token runs through top_k of its experts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from temper.train.actor import active_params

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 intermediate_size=64, vocab_size=100)
    moe = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "qwen3_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, **shape))
    total = sum(p.numel() for p in moe.parameters())
    experts_per_layer = 8 * 3 * 16 * 32  # gate, up and down of each expert: 3 x intermediate x hidden
    assert active_params(moe) == total - 2 * experts_per_layer * 6 // 8  # 6 of 8 experts idle in both layers
    dense = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **shape))
    assert active_params(dense) == sum(p.numel() for p in dense.parameters())
