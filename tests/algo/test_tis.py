import pytest
import torch

from temper.algo.tis import compute_tis_weights

RATIOS = torch.tensor([[3.0, 0.5, 1.1, 0.1, 7.0]])
MASK = torch.tensor([[1, 1, 1, 1, 0]])
OLD = RATIOS.log()
ROLLOUT = torch.zeros_like(OLD)


def test_truncate_clamps_weights_and_reports_metrics():
    weights, metrics = compute_tis_weights(OLD, ROLLOUT, MASK, tis_clip=2.0, tis_clip_low=0.2)
    assert torch.allclose(weights[:, :4], torch.tensor([[2.0, 0.5, 1.1, 0.2]]))
    assert metrics["tis"].item() == pytest.approx((3 + 0.5 + 1.1 + 0.1) / 4)
    assert metrics["tis_clipfrac"].item() == pytest.approx(2 / 4)
    assert metrics["tis_abs"].item() == pytest.approx((2 + 0.5 + 0.1 + 0.9) / 4)


def test_icepop_zeroes_tokens_outside_the_band():
    weights, metrics = compute_tis_weights(OLD, ROLLOUT, MASK, tis_clip=2.0, tis_clip_low=0.2, tis_mode="icepop")
    assert torch.allclose(weights[:, :4], torch.tensor([[0.0, 0.5, 1.1, 0.0]]))
    assert metrics["tis_clipfrac"].item() == pytest.approx(2 / 4)


def test_weights_are_detached():
    old = OLD.clone().requires_grad_()
    weights, _ = compute_tis_weights(old, ROLLOUT, MASK)
    assert not weights.requires_grad


def test_equal_log_probs_give_unit_weights():
    weights, metrics = compute_tis_weights(OLD, OLD, MASK)
    assert torch.equal(weights, torch.ones_like(OLD))
    assert metrics["tis_clipfrac"].item() == 0.0
    assert metrics["tis_abs"].item() == 0.0


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="truncate, icepop"):
        compute_tis_weights(OLD, ROLLOUT, MASK, tis_mode="mis")

