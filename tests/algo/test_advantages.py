import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from temper.algo.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages_and_returns,
    group_normalize_rewards,
    last_token_mask,
    leave_one_out_rewards,
    masked_whiten,
    response_extent,
    token_level_rewards,
)
from temper.algo.returns import compute_gae

# Two groups, interleaved: "a" = samples 0, 2, 4 with rewards 1, 0, 0; "b" = samples 1, 3 with 0.5, 1.5.
REWARDS = torch.tensor([1.0, 0.5, 0.0, 1.5, 0.0])
GROUPS = ["a", "b", "a", "b", "a"]


def test_grpo_normalization_by_hand():
    # a: mean 1/3, deviations 2/3, -1/3, -1/3, Bessel var (4/9 + 1/9 + 1/9) / 2 = 1/3
    # b: mean 1, deviations ∓0.5, var (0.25 + 0.25) / 1 = 0.5
    std_a, std_b = math.sqrt(1 / 3), math.sqrt(0.5)
    expected = [(2 / 3) / std_a, -0.5 / std_b, (-1 / 3) / std_a, 0.5 / std_b, (-1 / 3) / std_a]
    normalized = group_normalize_rewards(REWARDS, GROUPS)
    assert torch.allclose(normalized, torch.tensor(expected), atol=1e-5)


def test_dr_grpo_subtracts_group_mean_only():
    normalized = group_normalize_rewards(REWARDS, GROUPS, grpo_std_normalization=False)
    assert torch.allclose(normalized, torch.tensor([2 / 3, -0.5, -1 / 3, 0.5, -1 / 3]))


def test_tensor_group_index_and_singleton_group_is_zero():
    normalized = group_normalize_rewards(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([7, 9, 9]))
    # group 7 is alone: centered reward 0; group 9: mean 1.5, deviations ∓0.5, Bessel var 0.5
    assert normalized[0].item() == 0.0
    assert torch.allclose(normalized[1:], torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-6))


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    std_normalization=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_group_normalization_is_invariant_to_sample_order(sizes, std_normalization, seed):
    gen = torch.Generator().manual_seed(seed)
    groups = [g for g, size in enumerate(sizes) for _ in range(size)]
    rewards = torch.randint(0, 3, (len(groups),), generator=gen).double()
    order = torch.randperm(len(groups), generator=gen)
    plain = group_normalize_rewards(rewards, groups, grpo_std_normalization=std_normalization)
    shuffled = group_normalize_rewards(
        rewards[order], [groups[i] for i in order], grpo_std_normalization=std_normalization
    )
    assert torch.allclose(shuffled, plain[order])


def test_group_index_of_wrong_length_is_explained():
    with pytest.raises(ValueError, match="group_index has 2 entries but there are 5 rewards"):
        group_normalize_rewards(REWARDS, ["a", "b"])


def test_rloo_by_hand():
    rewards = torch.tensor([1.0, 0.5, 0.0, 1.5, 0.0, 2.0])
    groups = ["a", "b", "a", "b", "a", "c"]
    # a: 1 − (0 + 0)/2, 0 − (1 + 0)/2, 0 − 0.5; b: 0.5 − 1.5, 1.5 − 0.5; c alone keeps its reward
    expected = torch.tensor([1.0, -1.0, -0.5, 1.0, -0.5, 2.0])
    assert torch.allclose(leave_one_out_rewards(rewards, groups), expected)


def test_last_token_and_extent_skip_trailing_untrained_tokens():
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_mask(mask).tolist() == [
        [False, False, True, False, False],
        [False] * 5,
        [False, False, False, False, True],
    ]
    assert response_extent(mask).tolist() == [
        [True, True, True, False, False],
        [False] * 5,
        [True] * 5,
    ]


def test_token_level_rewards_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    shaped = token_level_rewards(torch.tensor([1.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(shaped, torch.tensor([[-0.05, -0.1, 0.0, -0.2 + 1.0, 0.0]]))


def test_reinforce_plus_plus_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    # token rewards [-0.05, -0.1, 0, 0.8, 0]; G_3 = 0.8, G_2 = 0.72, G_1 = -0.1 + 0.648, G_0 = -0.05 + 0.9·G_1
    advantages, returns = compute_advantages_and_returns(
        "reinforce_plus_plus", torch.tensor([1.0]), mask, kl=kl, kl_coef=0.5, gamma=0.9
    )
    g1 = -0.1 + 0.9 * 0.72
    assert torch.allclose(advantages, torch.tensor([[-0.05 + 0.9 * g1, g1, 0.0, 0.8, 0.0]]))
    assert torch.equal(advantages, returns)


def test_reinforce_plus_plus_baseline_by_hand():
    kl = torch.tensor([[0.2, 0.4], [0.1, 7.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # group mean 0.5 → centered [0.5, -0.5]; minus 0.5·kl on trained tokens
    advantages, returns = compute_advantages_and_returns(
        "reinforce_plus_plus_baseline", torch.tensor([1.0, 0.0]), mask, group_index=[0, 0], kl=kl, kl_coef=0.5
    )
    assert torch.allclose(advantages, torch.tensor([[0.4, 0.3], [-0.55, 0.0]]))
    assert torch.equal(advantages, returns)


@pytest.mark.parametrize("estimator", ["grpo", "gspo", "cispo"])
def test_grpo_family_broadcasts_normalized_reward_to_trained_tokens(estimator):
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages, returns = compute_advantages_and_returns(estimator, torch.tensor([1.0, 0.0]), mask, group_index=[4, 4])
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert torch.allclose(advantages, torch.tensor([[a, a, 0.0], [-a, 0.0, 0.0]]))
    assert torch.equal(advantages, returns)


def test_grpo_without_rewards_normalization_uses_raw_rewards():
    advantages, _ = compute_advantages_and_returns(
        "grpo", torch.tensor([1.0, 0.0]), torch.ones(2, 2), group_index=[0, 0], rewards_normalization=False
    )
    assert torch.equal(advantages, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_rloo_returns_raw_reward():
    advantages, returns = compute_advantages_and_returns(
        "rloo", torch.tensor([1.0, 0.0]), torch.ones(2, 1), group_index=[0, 0]
    )
    assert torch.equal(advantages, torch.tensor([[1.0], [-1.0]]))
    assert torch.equal(returns, torch.tensor([[1.0], [0.0]]))


def test_ppo_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    values = torch.tensor([[0.5, 0.25, 9.0]])
    advantages, returns = compute_advantages_and_returns("ppo", torch.tensor([1.0]), mask, values=values)
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.75, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 0.0]]))


def test_ppo_folds_kl_into_gae_rewards():
    gen = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    kl, values = torch.rand(2, 5, generator=gen), torch.rand(2, 5, generator=gen)
    rewards = torch.tensor([1.0, -1.0])
    advantages, returns = compute_advantages_and_returns(
        "ppo", rewards, mask, kl=kl, values=values, kl_coef=0.1, gamma=0.9, lambd=0.8
    )
    shaped = -0.1 * kl * mask
    shaped[0, 3] += 1.0
    shaped[1, 1] += -1.0
    live = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    expected_advantages, expected_returns = compute_gae(shaped, values, live, 0.9, 0.8)
    assert torch.allclose(advantages, expected_advantages)
    assert torch.allclose(returns, expected_returns)


def test_ppo_with_response_mask_is_slimes_token_rewards():
    """slime's ppo: r_t = −kl_coef·kl_t on every response token (tool tokens too), R on the response's
    last token (here a trailing tool token), GAE up to the response's end; without response_mask the
    episode follows the loss mask (--ppo-mask-tool-tokens)."""
    kl = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0]])
    loss_mask = torch.tensor([[1, 0, 1, 0]])  # token 1 and 3 are tool tokens; token 3 ends the response
    response = torch.tensor([[1, 1, 1, 0]])  # R_i = 3: position 3 is padding
    loss_mask = loss_mask * response
    g = 0.5  # gamma = lambda = 1 → A_t = Σ_{k≥t} r_k − V_t
    slime_rewards = [-g * 0.2, -g * 0.4, -g * 0.6 + 1.0]
    want = [sum(slime_rewards[t:]) - values[0, t].item() for t in range(3)] + [0.0]
    advantages, returns = compute_advantages_and_returns(
        "ppo", torch.tensor([1.0]), loss_mask, kl=kl, values=values, kl_coef=g, response_mask=response
    )
    assert torch.allclose(advantages, torch.tensor([want]))
    assert torch.allclose(returns[:, :3], advantages[:, :3] + values[:, :3])
    masked_rewards = [-g * 0.2, 0.0, -g * 0.6 + 1.0]
    want = [sum(masked_rewards[t:]) - values[0, t].item() for t in range(3)] + [0.0]
    advantages, _ = compute_advantages_and_returns("ppo", torch.tensor([1.0]), loss_mask, kl=kl, values=values, kl_coef=g)
    assert torch.allclose(advantages, torch.tensor([want]))


def test_ppo_response_mask_moves_the_reward_past_trailing_tool_tokens():
    kl, values = torch.zeros(1, 3), torch.zeros(1, 3)
    loss_mask, response = torch.tensor([[1, 0, 0]]), torch.tensor([[1, 1, 1]])
    slime, _ = compute_advantages_and_returns(
        "ppo", torch.tensor([2.0]), loss_mask, kl=kl, values=values, gamma=0.5, lambd=1.0, response_mask=response
    )
    masked, _ = compute_advantages_and_returns("ppo", torch.tensor([2.0]), loss_mask, kl=kl, values=values, gamma=0.5)
    assert torch.allclose(slime, torch.tensor([[0.5, 1.0, 2.0]]))  # R on token 2, discounted back
    assert torch.allclose(masked, torch.tensor([[2.0, 0.0, 0.0]]))  # R on the last trained token


def test_masked_whiten_by_hand():
    advantages = torch.tensor([[1.0, 2.0, 50.0], [3.0, -7.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # trained values 1, 2, 3: mean 2, Bessel var 1
    assert torch.allclose(masked_whiten(advantages, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    unshifted = masked_whiten(advantages, mask, shift_mean=False)
    assert torch.allclose(unshifted, torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def test_masked_whiten_all_reduce_matches_whole_batch():
    gen = torch.Generator().manual_seed(0)
    advantages = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=gen) > 0.3

    def sum_with_other_rank(other_advantages, other_mask):
        x = torch.where(other_mask, other_advantages, 0.0)
        other_stats = torch.stack([x.sum(), x.square().sum(), other_mask.sum().double()])
        return lambda stats: stats + other_stats

    first = masked_whiten(advantages[:2], mask[:2], all_reduce=sum_with_other_rank(advantages[2:], mask[2:]))
    second = masked_whiten(advantages[2:], mask[2:], all_reduce=sum_with_other_rank(advantages[:2], mask[:2]))
    assert torch.allclose(torch.cat([first, second]), masked_whiten(advantages, mask))


def test_normalize_advantages_whitens_dispatcher_output():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([2.0, 0.0])
    advantages, returns = compute_advantages_and_returns(
        "reinforce_plus_plus", rewards, mask, normalize_advantages=True
    )
    trained = advantages[mask.bool()]
    assert trained.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert trained.std().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(returns, torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError) as error:
        compute_advantages_and_returns("a2c", REWARDS, torch.ones(5, 2), group_index=GROUPS)
    assert "'a2c'" in str(error.value)
    for name in ADVANTAGE_ESTIMATORS:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("estimator", "kwargs", "message"),
    [
        ("grpo", {}, "needs group_index"),
        ("ppo", {}, "needs critic values"),
        ("reinforce_plus_plus", {"kl_coef": 0.1}, "needs the per-token kl"),
    ],
)
def test_missing_inputs_are_named(estimator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages_and_returns(estimator, REWARDS, torch.ones(5, 2), **kwargs)


def test_rewards_and_mask_shapes_are_checked():
    with pytest.raises(ValueError, match=r"rewards \(4,\) and loss_mask \(5, 2\)"):
        compute_advantages_and_returns("grpo", torch.zeros(4), torch.ones(5, 2), group_index=GROUPS)
