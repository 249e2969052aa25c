import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from temper.algo.kl import compute_approx_kl, compute_kl_loss

LOGP = torch.tensor([[0.0, -1.0]])
REF = torch.tensor([[-1.0, 0.0]])  # log_ratio = [1, -1]


def test_k1_is_log_ratio():
    assert torch.allclose(compute_approx_kl(LOGP, REF, "k1"), torch.tensor([[1.0, -1.0]]))


def test_k2_is_half_squared_log_ratio():
    assert torch.allclose(compute_approx_kl(LOGP, REF, "k2"), torch.tensor([[0.5, 0.5]]))


@pytest.mark.parametrize("kind", ["k3", "low_var_kl"])
def test_k3_is_exp_neg_ratio_minus_one_plus_ratio(kind):
    expected = torch.tensor([[math.exp(-1) - 1 + 1, math.exp(1) - 1 - 1]])
    assert torch.allclose(compute_approx_kl(LOGP, REF, kind), expected)


def test_low_var_kl_is_clamped_and_k3_is_not():
    logp, ref = torch.tensor([[-20.0]]), torch.tensor([[0.0]])
    assert compute_approx_kl(logp, ref, "low_var_kl").item() == 10.0
    assert compute_approx_kl(logp, ref, "k3").item() == pytest.approx(math.exp(20) - 21, rel=1e-5)


def test_importance_ratio_multiplies_the_estimate():
    ratio = torch.tensor([[2.0, 0.5]])
    assert torch.allclose(compute_approx_kl(LOGP, REF, "k2", ratio), torch.tensor([[1.0, 0.25]]))


def test_unbiased_low_var_kl_multiplies_then_clamps_as_slime():
    """slime: kl = clamp(ratio · k3, −10, 10); clamping k3 first would let ratio · 10 through."""
    logp = torch.tensor([[-20.0, -1.0, 0.5]])
    ref = torch.tensor([[0.0, 0.0, 0.0]])
    ratio = torch.tensor([[3.0, 4.0, 0.1]])
    k3 = [math.exp(20) - 21, math.exp(1) - 2, math.exp(-0.5) - 1 + 0.5]
    expected = torch.tensor([[min(max(r * k, -10), 10) for r, k in zip(ratio[0].tolist(), k3)]])
    assert expected[0, 0] == 10.0 and expected[0, 1] == pytest.approx(4 * (math.e - 2))
    assert torch.allclose(compute_approx_kl(logp, ref, "low_var_kl", ratio), expected)


def test_unbiased_low_var_kl_loss_is_the_clamped_weighted_mean():
    logp, ref, old = torch.tensor([[-20.0, -1.0]]), torch.zeros(1, 2), torch.tensor([[-20.0 - math.log(3), -1.0]])
    loss = compute_kl_loss(logp, ref, torch.ones(1, 2), kl_loss_type="low_var_kl", old_log_probs=old)
    assert loss.item() == pytest.approx((10.0 + (math.e - 2)) / 2, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8))
def test_k3_is_non_negative_and_zero_at_equal_log_probs(log_ratios):
    logp = torch.tensor(log_ratios, dtype=torch.float64)
    kl = compute_approx_kl(logp, torch.zeros_like(logp), "k3")
    assert (kl >= 0).all()
    assert (kl[logp == 0] == 0).all()


def test_unknown_type_lists_valid_names():
    with pytest.raises(ValueError, match="k1, k2, k3, low_var_kl"):
        compute_approx_kl(LOGP, REF, "k4")


def test_kl_loss_aggregates_masked_estimates():
    logp = torch.tensor([[0.0, -1.0, 5.0], [0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # k2 per token: [0.5, 0.5, -], [0.125, -, -]; sample means 0.5 and 0.125
    loss = compute_kl_loss(logp, ref, mask, kl_loss_type="k2")
    assert loss.item() == pytest.approx((0.5 + 0.125) / 2)


def test_unbiased_kl_loss_weights_by_policy_ratio():
    logp, ref, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]]), torch.tensor([[-math.log(2)]])
    loss = compute_kl_loss(logp, ref, torch.ones(1, 1), kl_loss_type="k1", old_log_probs=old)
    assert loss.item() == pytest.approx(2.0 * 1.0)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "low_var_kl"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_kl_loss_gradient_matches_finite_differences(kind, unbiased):
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(2, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = -torch.rand(2, 4, generator=gen, dtype=torch.float64)
    old = -torch.rand(2, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0]])

    def loss(x):
        return compute_kl_loss(x, ref, mask, kl_loss_type=kind, old_log_probs=old if unbiased else None)

    assert torch.autograd.gradcheck(loss, (logp,))
