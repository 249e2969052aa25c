import pytest
import torch

from temper.algo.value_loss import compute_value_loss, value_loss_function


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 0.6]])
    old_values = torch.tensor([[0.5, 0.5, 0.5]])
    returns = torch.tensor([[2.0, 0.0, 0.4]])
    losses, clipfrac = compute_value_loss(values, old_values, returns, 0.2)
    # t0: v_clip 0.7 → max(1.69, 1.0); t1: v_clip 0.3 → max(0.09, 0); t2: inside the clip → 0.04
    assert torch.allclose(losses, torch.tensor([[1.69, 0.09, 0.04]]))
    assert clipfrac.tolist() == [[1.0, 1.0, 0.0]]


def test_value_loss_function_aggregates_and_reports():
    values = torch.tensor([[1.0, 0.0], [0.6, 5.0]])
    old_values = torch.full((2, 2), 0.5)
    returns = torch.tensor([[2.0, 0.0], [0.4, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = value_loss_function(values, old_values, returns, mask, value_clip=0.2)
    assert loss.item() == pytest.approx(((1.69 + 0.09) / 2 + 0.04) / 2)
    assert metrics["value_clipfrac"].item() == pytest.approx(2 / 3)
    per_token, _ = value_loss_function(values, old_values, returns, mask, calculate_per_token_loss=True)
    assert per_token.item() == pytest.approx((1.69 + 0.09 + 0.04) / 3)


def test_value_loss_gradient_matches_finite_differences_and_ignores_masked_tokens():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4, generator=gen, dtype=torch.float64).requires_grad_()
    old_values = values.detach() + 0.3 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    returns = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])

    def loss(v):
        return value_loss_function(v, old_values, returns, mask, value_clip=0.2)[0]

    assert torch.autograd.gradcheck(loss, (values,))
    loss(values).backward()
    assert (values.grad[~mask.bool()] == 0).all()
