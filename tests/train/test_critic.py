"""The PPO critic: value shapes, the clipped value loss falling on a fixed batch, and a PPO run that learns."""

import pytest
import torch
from train_helpers import make_cfg, params_of, sample_batch, sync_weights, toy_batch
from transformers import AutoModelForCausalLM

from temper.train import Actor, Critic

PPO = dict(advantage_estimator="ppo", normalize_advantages=True, gamma=1.0, lambd=1.0)


def test_values_start_at_zero_one_per_response_token(qwen3_dir):
    critic = Critic(make_cfg(qwen3_dir, **PPO))
    batch = toy_batch(6)
    values = critic.compute_values(batch)
    assert [v.shape[0] for v in values] == batch.response_lengths
    assert all(v.dtype == torch.float32 and torch.count_nonzero(v) == 0 for v in values)  # zero-initialized head


def test_value_loss_falls_on_a_fixed_batch(qwen3_dir):
    """With γ = λ = 1 the returns are the raw rewards whatever the values: five critic updates on one
    batch (--value-clip 0.5, lr 1e-3) cut the value loss to at most half of the first update's."""
    cfg = make_cfg(qwen3_dir, value_clip=0.5, **PPO)
    actor, critic = Actor(cfg), Critic(cfg, lr=1e-3)
    batch = toy_batch(8, seed=4)
    batch.rewards = batch.raw_rewards.clone()  # PPO trains on raw rewards
    losses = []
    for rollout_id in range(5):
        data = actor.prepare(rollout_id, batch, critic.compute_values(batch))
        torch.testing.assert_close(data.returns[0], torch.full_like(data.returns[0], batch.rewards[0].item()))
        losses.append(critic.update(data)["value_loss"])
    assert losses[-1] <= 0.5 * losses[0], losses


def test_ppo_with_a_critic_raises_the_reward_of_fresh_samples(qwen3_dir):
    """PPO (GAE over critic values, 2 optimizer steps per rollout, whitened advantages) on the toy
    task of test_actor.py: the mean sampled reward rises from <= 0.15 to >= 0.5 within 10 rollouts."""
    cfg = make_cfg(
        qwen3_dir,
        rollout_batch_size=8,
        n_samples_per_prompt=4,
        num_steps_per_rollout=2,
        lr=1e-2,
        num_rollout=10,
        use_dynamic_batch_size=True,
        max_tokens_per_gpu=512,
        **PPO,
    )
    actor, critic = Actor(cfg), Critic(cfg, lr=5e-3)
    critic_start = params_of(critic.model)
    sampler = AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 900, (4,), generator=g) for _ in range(8)]
    rewards = []
    for rollout_id in range(10):
        sync_weights(actor, sampler)
        batch = sample_batch(sampler, prompts, 4, 6, seed=rollout_id)
        batch.rewards = batch.raw_rewards.clone()
        rewards.append(batch.rewards.mean().item())
        data = actor.prepare(rollout_id, batch, critic.compute_values(batch))
        critic_metrics = critic.update(data)
        actor.update(data)
        assert set(critic_metrics) >= {"value_loss", "value_clipfrac", "grad_norm", "lr"}
    assert rewards[0] <= 0.15
    assert max(rewards[-2:]) >= 0.5, rewards
    assert any(not torch.equal(critic_start[n], t) for n, t in params_of(critic.model).items())


def test_ppo_needs_values(qwen3_dir):
    actor = Actor(make_cfg(qwen3_dir, **PPO))
    with pytest.raises(ValueError, match="critic"):
        actor.prepare(0, toy_batch(8))
