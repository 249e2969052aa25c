"""Advantages from a rollout batch (through temper.algo) and the padding helpers."""

import pytest
import torch
from train_helpers import make_cfg, toy_batch

from temper.train.train_data import compute_advantages, pad, pad_flat, unpad


def test_grpo_advantages_are_the_batch_rewards_as_given(qwen3_dir):
    """The rollout manager normalizes rewards; the trainer must not normalize them again."""
    batch = toy_batch(6, group_size=3)
    batch.rewards = torch.tensor([3.0, 1.0, 2.0, -1.0, 0.5, 7.0])  # not zero-mean per group on purpose
    advantages, returns = compute_advantages(
        make_cfg(qwen3_dir, rollout_batch_size=2, n_samples_per_prompt=3, micro_batch_size=3), batch
    )
    for adv, ret, reward, mask in zip(advantages, returns, batch.rewards, batch.loss_masks):
        assert torch.equal(adv, reward * mask) and torch.equal(ret, adv)


def test_ppo_advantages_use_the_critic_values(qwen3_dir):
    batch = toy_batch(4, group_size=2)
    values = [torch.full((r,), 0.25) for r in batch.response_lengths]
    cfg = make_cfg(qwen3_dir, advantage_estimator="ppo", rollout_batch_size=2, gamma=1.0, lambd=1.0)
    advantages, returns = compute_advantages(cfg, batch, values=values)
    # gamma = lambda = 1: returns are the reward on every position up to the end, advantages R - V
    assert torch.allclose(returns[0], torch.full_like(returns[0], batch.rewards[0].item()))
    assert torch.allclose(advantages[0], returns[0] - 0.25)


def test_ppo_token_rewards_span_the_response_unless_tool_tokens_are_masked(qwen3_dir):
    """slime's default: a response ending in a tool token gets R on that token (KL charged there too);
    --ppo-mask-tool-tokens puts R on the last trained token and ends the episode there."""
    batch = toy_batch(2, group_size=2, response_len=3)
    batch.loss_masks[0] = torch.tensor([1.0, 1.0, 0.0])  # the last response token is a tool token
    values = [torch.zeros(r) for r in batch.response_lengths]
    flags = dict(advantage_estimator="ppo", rollout_batch_size=1, micro_batch_size=2, gamma=0.5, lambd=1.0)
    reward = batch.rewards[0].item()
    slime, _ = compute_advantages(make_cfg(qwen3_dir, **flags), batch, values=values)
    assert torch.allclose(slime[0], torch.tensor([0.25, 0.5, 1.0]) * reward)
    masked, _ = compute_advantages(make_cfg(qwen3_dir, "--ppo-mask-tool-tokens", **flags), batch, values=values)
    assert torch.allclose(masked[0], torch.tensor([0.5, 1.0, 0.0]) * reward)


def test_ppo_mask_tool_tokens_needs_ppo(qwen3_dir):
    from temper.config import ConfigError

    with pytest.raises(ConfigError, match="--ppo-mask-tool-tokens .* needs --advantage-estimator ppo"):
        make_cfg(qwen3_dir, "--ppo-mask-tool-tokens")


def test_kl_shaped_rewards_need_old_and_reference_log_probs(qwen3_dir):
    cfg = make_cfg(qwen3_dir, "--normalize-advantages", advantage_estimator="reinforce_plus_plus", kl_coef=0.1)
    batch = toy_batch(8)
    with pytest.raises(ValueError, match="--kl-coef"):
        compute_advantages(cfg, batch)
    same = [torch.zeros(r) for r in batch.response_lengths]
    advantages, _ = compute_advantages(cfg, batch, old_log_probs=same, ref_log_probs=same)
    assert [len(a) for a in advantages] == batch.response_lengths


def test_padding_round_trips_and_keeps_gradients():
    flat = torch.arange(6.0, requires_grad=True)
    padded = pad_flat(flat, [2, 0, 4])
    assert padded.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [2, 3, 4, 5]]
    (padded * torch.arange(12.0).view(3, 4)).sum().backward()
    assert flat.grad.tolist() == [0, 1, 8, 9, 10, 11]
    lists = [torch.tensor([1.0, 2.0]), torch.tensor([]), torch.tensor([3.0])]
    assert [t.tolist() for t in unpad(pad(lists), [2, 0, 1])] == [[1, 2], [], [3]]
    assert pad(lists, [1]).shape == (1, 1)
