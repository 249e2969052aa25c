import pytest
import torch

from temper.algo.sft_loss import sft_loss_function

LOG_PROBS = torch.tensor([[-1.0, -3.0, -9.0], [-2.0, -9.0, -9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_sft_loss_is_negative_mean_log_prob():
    loss, metrics = sft_loss_function(LOG_PROBS, MASK)
    assert loss.item() == pytest.approx((2.0 + 2.0) / 2)
    assert metrics["sft_loss"].item() == loss.item()
    per_token, _ = sft_loss_function(LOG_PROBS, MASK, calculate_per_token_loss=True)
    assert per_token.item() == pytest.approx(6.0 / 3)


def test_sft_gradient_is_minus_one_over_tokens_per_sample():
    log_probs = LOG_PROBS.clone().requires_grad_()
    sft_loss_function(log_probs, MASK)[0].backward()
    # sample 0: −1/(2 tokens · 2 samples); sample 1: −1/(1 token · 2 samples); masked tokens get none
    assert torch.allclose(log_probs.grad, torch.tensor([[-0.25, -0.25, 0.0], [-0.5, 0.0, 0.0]]))
