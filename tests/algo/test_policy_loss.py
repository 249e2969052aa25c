import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from temper.algo.aggregation import aggregate
from temper.algo.policy_loss import (
    PolicyLossConfig,
    compute_cispo_loss,
    compute_policy_loss,
    compute_ppo_kl,
    policy_loss_function,
)


def random_batch(seed, batch=3, length=5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen, dtype=dtype) * 2
    return {
        "log_probs": old + 0.3 * torch.randn(batch, length, generator=gen, dtype=dtype),
        "old_log_probs": old,
        "advantages": torch.randn(batch, length, generator=gen, dtype=dtype),
        "loss_mask": torch.rand(batch, length, generator=gen) > 0.3,
        "ref_log_probs": old + 0.2 * torch.randn(batch, length, generator=gen, dtype=dtype),
        "rollout_log_probs": old + 0.2 * torch.randn(batch, length, generator=gen, dtype=dtype),
        "entropy": torch.rand(batch, length, generator=gen, dtype=dtype),
    }


def test_asymmetric_clip_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 0.9, 1.2]])
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    losses, clipfrac = compute_policy_loss(-ratios.log(), advantages, 0.2, 0.3)
    # 1.5 clipped to 1.3 for A>0; 0.5 clipped to 0.8 for A<0 (pessimistic max); 0.9 and 1.2 inside
    assert torch.allclose(losses, torch.tensor([[-1.3, 0.8, -1.8, 1.2]]))
    assert clipfrac.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_clip_leaves_the_pessimistic_side_unclipped():
    # A>0 with r below 1−ε and A<0 with r above 1+ε keep the raw ratio
    ratios = torch.tensor([[0.5, 2.0]])
    losses, clipfrac = compute_policy_loss(-ratios.log(), torch.tensor([[1.0, -1.0]]), 0.2, 0.2)
    assert torch.allclose(losses, torch.tensor([[-0.5, 2.0]]))
    assert clipfrac.tolist() == [[0.0, 0.0]]


def test_dual_clip_caps_negative_advantage_losses():
    ratios = torch.tensor([[5.0, 5.0, 1.1]])
    advantages = torch.tensor([[-1.0, 1.0, -1.0]])
    losses, _ = compute_policy_loss(-ratios.log(), advantages, 0.2, 0.3, eps_clip_c=3.0)
    # A<0, r=5: max(5, 1.3) = 5, capped at c·|A| = 3; A>0 untouched; small losses below the cap untouched
    assert torch.allclose(losses, torch.tensor([[3.0, -1.3, 1.1]]))


def test_gspo_ratio_is_sequence_geometric_mean():
    log_probs = torch.tensor([[math.log(2.0), 0.0, 9.0], [0.0, 0.0, 0.0]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ppo_kl = compute_ppo_kl(log_probs, old, mask, sequence_level=True)
    assert torch.allclose(torch.exp(-ppo_kl[0]), torch.full((3,), math.sqrt(2.0)))
    assert torch.equal(ppo_kl[1], torch.zeros(3))


def test_cispo_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = log_probs.detach() - torch.tensor([[math.log(2.0), math.log(0.5)]])
    advantages = torch.tensor([[1.0, -1.0]])
    losses, clipfrac = compute_cispo_loss(log_probs, old, advantages, 1.0, 0.5)
    # weights: 2 → 1.5 (clipped), 0.5 stays (lower bound 0); loss = −w·A·logp
    assert torch.allclose(losses, torch.tensor([[1.5, -1.0]]))
    assert clipfrac.tolist() == [[1.0, 0.0]]
    losses.sum().backward()
    assert torch.allclose(log_probs.grad, torch.tensor([[-1.5, 0.5]]))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), estimator=st.sampled_from(["grpo", "gspo", "ppo"]), per_token=st.booleans())
def test_ratio_one_gives_no_clip_no_kl_and_minus_mean_advantage(seed, estimator, per_token):
    batch = random_batch(seed)
    config = PolicyLossConfig(advantage_estimator=estimator, eps_clip_c=3.0, calculate_per_token_loss=per_token)
    loss, metrics = policy_loss_function(
        batch["old_log_probs"].clone(), batch["old_log_probs"], batch["advantages"], batch["loss_mask"], config
    )
    assert metrics["pg_clipfrac"].item() == 0.0
    assert metrics["ppo_kl"].item() == 0.0
    expected = aggregate(-batch["advantages"], batch["loss_mask"], config.agg_mode)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("estimator", ["grpo", "gspo", "cispo"])
def test_masked_tokens_change_neither_loss_nor_gradients(estimator):
    batch = random_batch(1)
    config = PolicyLossConfig(
        advantage_estimator=estimator,
        eps_clip_c=3.0,
        use_kl_loss=True,
        kl_loss_coef=0.1,
        kl_loss_type="low_var_kl",
        use_unbiased_kl=True,
        entropy_coef=0.01,
        use_tis=True,
    )
    masked = ~batch["loss_mask"]
    perturbed = {
        name: torch.where(masked, value + 3.0 * torch.randn_like(value), value) if value.is_floating_point() else value
        for name, value in batch.items()
    }
    results = []
    for inputs in (batch, perturbed):
        log_probs = inputs["log_probs"].clone().requires_grad_()
        entropy = inputs["entropy"].clone().requires_grad_()
        loss, _ = policy_loss_function(
            log_probs,
            inputs["old_log_probs"],
            inputs["advantages"],
            inputs["loss_mask"],
            config,
            ref_log_probs=inputs["ref_log_probs"],
            rollout_log_probs=inputs["rollout_log_probs"],
            entropy=entropy,
        )
        loss.backward()
        results.append((loss.detach(), log_probs.grad, entropy.grad))
    assert torch.allclose(results[0][0], results[1][0])
    for grad, perturbed_grad in zip(results[0][1:], results[1][1:]):
        assert torch.allclose(grad, perturbed_grad)
        assert (grad[masked] == 0).all()


@pytest.mark.parametrize("estimator", ["grpo", "gspo", "cispo"])
def test_policy_loss_gradient_matches_finite_differences(estimator):
    batch = random_batch(2)
    if estimator == "cispo":
        # CISPO's weight is a stop-gradient, so its gradient is the derivative of the loss only where
        # the weight is locally constant: put every ratio outside the clip band (exp(±0.5)).
        offsets = torch.where(torch.rand(3, 5, generator=torch.Generator().manual_seed(5)) > 0.5, 0.5, -0.5)
        batch["log_probs"] = batch["old_log_probs"] + offsets.double()
    config = PolicyLossConfig(
        advantage_estimator=estimator,
        eps_clip_high=0.28,
        use_kl_loss=True,
        kl_loss_coef=0.3,
        kl_loss_type="k3",
        entropy_coef=0.05,
        use_tis=True,
    )

    def loss(log_probs, entropy):
        value, _ = policy_loss_function(
            log_probs,
            batch["old_log_probs"],
            batch["advantages"],
            batch["loss_mask"],
            config,
            ref_log_probs=batch["ref_log_probs"],
            rollout_log_probs=batch["rollout_log_probs"],
            entropy=entropy,
        )
        return value

    inputs = (batch["log_probs"].requires_grad_(), batch["entropy"].requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs)


def test_cispo_gradient_keeps_flowing_through_clipped_tokens():
    batch = random_batch(4)
    log_probs = (batch["old_log_probs"] + 2.0).requires_grad_()  # every ratio e² ≫ 1 + eps_clip_high
    losses, clipfrac = compute_cispo_loss(log_probs, batch["old_log_probs"], batch["advantages"], 0.2, 0.28)
    losses.sum().backward()
    assert (clipfrac == 1).all()
    assert torch.allclose(log_probs.grad, -1.28 * batch["advantages"])


def test_policy_loss_by_hand_with_kl_entropy_and_tis():
    log_probs = torch.tensor([[math.log(1.5), 0.0]])
    old = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, 1.0]])
    mask = torch.tensor([[1, 0]])
    config = PolicyLossConfig(use_kl_loss=True, kl_loss_coef=0.5, entropy_coef=0.1, use_tis=True, tis_clip=1.2)
    loss, metrics = policy_loss_function(
        log_probs,
        old,
        advantages,
        mask,
        config,
        ref_log_probs=torch.zeros(1, 2),
        rollout_log_probs=torch.tensor([[-math.log(4.0), 0.0]]),
        entropy=torch.tensor([[2.0, 5.0]]),
    )
    # pg: ratio 1.5 clipped to 1.2 → −1.2, TIS weight min(4, 1.2) → −1.44; entropy 2; k1 = log 1.5
    expected = -1.2 * 1.2 - 0.1 * 2.0 + 0.5 * math.log(1.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["pg_loss"].item() == pytest.approx(-1.44, rel=1e-6)
    assert metrics["pg_clipfrac"].item() == 1.0
    assert metrics["ppo_kl"].item() == pytest.approx(-math.log(1.5), rel=1e-6)
    assert metrics["tis"].item() == pytest.approx(4.0, rel=1e-6)
    assert metrics["train_rollout_logprob_abs_diff"].item() == pytest.approx(math.log(4.0), rel=1e-6)
    assert not any(value.requires_grad for value in metrics.values())


def test_logprob_abs_diff_compares_current_log_probs_when_old_are_the_engines():
    """slime: train_rollout_logprob_abs_diff = mean |old − roll|, or |logp − roll| with --use-rollout-logprobs
    (then old == roll and the old comparison would always read 0)."""
    log_probs = torch.tensor([[-0.5, -1.0, -2.0]])
    rollout = torch.tensor([[-0.7, -1.5, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    advantages = torch.ones(1, 3)
    _, engine_old = policy_loss_function(
        log_probs, rollout, advantages, mask, PolicyLossConfig(use_rollout_logprobs=True), rollout_log_probs=rollout
    )
    assert engine_old["train_rollout_logprob_abs_diff"].item() == pytest.approx((0.2 + 0.5) / 2)
    trainer_old = torch.tensor([[-0.6, -1.1, -3.0]])
    _, recomputed = policy_loss_function(
        log_probs, trainer_old, advantages, mask, PolicyLossConfig(), rollout_log_probs=rollout
    )
    assert recomputed["train_rollout_logprob_abs_diff"].item() == pytest.approx((0.1 + 0.4) / 2)


def test_dr_grpo_constant_denominator_applies_to_pg_term():
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    log_probs = torch.zeros(2, 4)
    loss, _ = policy_loss_function(log_probs, log_probs, advantages, mask, PolicyLossConfig(pg_loss_constant_len=8))
    # Σ −A over trained tokens = −(4 + 2), over 2 samples × 8
    assert loss.item() == pytest.approx(-6 / 16)


def test_tis_function_rejects_tokens_from_the_numerator_only():
    """slime: a custom TIS function's masks rebuild the numerator; denominators keep the original masks."""
    log_probs = torch.zeros(2, 3)
    advantages = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])

    def tis(pg_losses, old, rollout, loss_mask):
        kept = loss_mask.clone()
        kept[0, 0] = 0
        return pg_losses * 2.0, kept, {"weight": torch.tensor(2.0)}

    config = PolicyLossConfig(use_tis=True)
    loss, metrics = policy_loss_function(
        log_probs, log_probs, advantages, mask, config, rollout_log_probs=log_probs, tis_function=tis
    )
    # ratio 1 → pg_t = −A_t, ×2; sample 0 keeps token 1 over its 2 tokens, sample 1 all 3 tokens
    assert loss.item() == pytest.approx((-2 * 2 / 2 + -2 * (4 + 5 + 6) / 3) / 2)
    assert metrics["weight"].item() == 2.0


def test_pg_loss_reducer_replaces_the_aggregation_of_the_pg_term_only():
    log_probs = torch.zeros(2, 3)
    advantages = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    entropy = torch.ones(2, 3)
    loss, metrics = policy_loss_function(
        log_probs,
        log_probs,
        advantages,
        mask,
        PolicyLossConfig(entropy_coef=0.5),
        entropy=entropy,
        pg_loss_reducer=lambda pg, m: (pg * m).sum() / 100,
    )
    assert metrics["pg_loss"].item() == pytest.approx(-(1 + 2 + 4 + 5 + 6) / 100)
    assert loss.item() == pytest.approx(-(1 + 2 + 4 + 5 + 6) / 100 - 0.5 * 1.0)  # entropy keeps the sample mean


def test_missing_inputs_are_named():
    batch = random_batch(0)
    args = (batch["log_probs"], batch["old_log_probs"], batch["advantages"], batch["loss_mask"])
    with pytest.raises(ValueError, match="rollout_log_probs"):
        policy_loss_function(*args, PolicyLossConfig(use_tis=True))
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss_function(*args, PolicyLossConfig(use_kl_loss=True))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss_function(*args, PolicyLossConfig(entropy_coef=0.1))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("advantage_estimator", "a2c", "grpo, gspo"),
        ("kl_loss_type", "k9", "k1, k2, k3, low_var_kl"),
        ("tis_mode", "soft", "truncate, icepop"),
        ("eps_clip_c", 0.5, "must be > 1"),
        ("pg_loss_constant_len", 0, "positive length"),
        ("tis_clip_low", 3.0, "must not exceed tis_clip"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(**{field: value})


def test_eps_clip_high_defaults_to_eps_clip():
    assert PolicyLossConfig(eps_clip=0.1).clip_high == 0.1
    assert PolicyLossConfig(eps_clip=0.1, eps_clip_high=0.3).clip_high == 0.3
