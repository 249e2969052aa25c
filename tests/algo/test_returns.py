import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from temper.algo.returns import compute_gae, discounted_cumsum, discounted_returns


def naive_discounted_cumsum(x, discount):
    out = torch.zeros_like(x)
    running = torch.zeros(x.shape[0], dtype=x.dtype)
    for t in reversed(range(x.shape[1])):
        running = x[:, t] + discount * running
        out[:, t] = running
    return out


def naive_gae(rewards, values, lengths, gamma, lambd):
    advantages = torch.zeros_like(rewards)
    for i, length in enumerate(lengths):
        gae = 0.0
        for t in reversed(range(length)):
            next_value = values[i, t + 1] if t + 1 < length else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            gae = delta + gamma * lambd * gae
            advantages[i, t] = gae
    returns = torch.zeros_like(rewards)
    for i, length in enumerate(lengths):
        returns[i, :length] = advantages[i, :length] + values[i, :length]
    return advantages, returns


def test_discounted_returns_by_hand():
    # G_2 = 3; G_1 = 2 + 0.5·3 = 3.5; G_0 = 1 + 0.5·3.5 = 2.75
    returns = discounted_returns(torch.tensor([[1.0, 2.0, 3.0]]), 0.5)
    assert torch.allclose(returns, torch.tensor([[2.75, 3.5, 3.0]]))


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(0, 300),
    chunk_size=st.sampled_from([1, 3, 16, 128]),
    discount=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_chunked_scan_equals_naive_loop(length, chunk_size, discount, seed):
    x = torch.randn(3, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.allclose(discounted_cumsum(x, discount, chunk_size), naive_discounted_cumsum(x, discount))


def test_gae_by_hand_gamma_lambda_one():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])  # the 9 is padding and must be ignored
    live = torch.tensor([[1, 1, 0]])
    # δ_1 = 1 − 0.25 = 0.75, δ_0 = 0 + 0.25 − 0.5 = −0.25; A_0 = −0.25 + 0.75
    advantages, returns = compute_gae(rewards, values, live, 1.0, 1.0)
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.75, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 0.0]]))


def test_gae_by_hand_discounted():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25]])
    # δ_1 = 0.75; δ_0 = 0.5·0.25 − 0.5 = −0.375; A_0 = −0.375 + 0.25·0.75 = −0.1875
    advantages, returns = compute_gae(rewards, values, torch.ones(1, 2), 0.5, 0.5)
    assert torch.allclose(advantages, torch.tensor([[-0.1875, 0.75]]))
    assert torch.allclose(returns, torch.tensor([[0.3125, 1.0]]))


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    gamma=st.floats(0.5, 1.0),
    lambd=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_gae_equals_naive_loop(lengths, gamma, lambd, seed):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 3
    rewards = torch.randn(len(lengths), width, generator=gen, dtype=torch.float64)
    values = torch.randn(len(lengths), width, generator=gen, dtype=torch.float64)
    live = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    rewards = torch.where(live, rewards, 0.0)
    advantages, returns = compute_gae(rewards, values, live, gamma, lambd)
    expected_advantages, expected_returns = naive_gae(rewards, values, lengths, gamma, lambd)
    assert torch.allclose(advantages, expected_advantages)
    assert torch.allclose(returns, expected_returns)


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    values = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    advantages, returns = compute_gae(rewards, values, torch.ones(2, 6), 0.9, 1.0)
    assert torch.allclose(returns, naive_discounted_cumsum(rewards, 0.9))
    assert torch.allclose(advantages, naive_discounted_cumsum(rewards, 0.9) - values)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="values"):
        compute_gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)
