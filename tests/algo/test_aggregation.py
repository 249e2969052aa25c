import pytest
import torch

from temper.algo.aggregation import aggregate, masked_mean, require_same_shape, token_count

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_sample_mean_averages_each_samples_token_mean():
    # sample 0: (1 + 2) / 2 = 1.5; sample 1: 4 / 1 = 4 -> (1.5 + 4) / 2
    assert aggregate(VALUES, MASK).item() == pytest.approx(2.75)


def test_token_mean_divides_by_all_trained_tokens():
    assert aggregate(VALUES, MASK, "token_mean").item() == pytest.approx((1 + 2 + 4) / 3)
    assert masked_mean(VALUES, MASK).item() == pytest.approx((1 + 2 + 4) / 3)


def test_constant_len_is_dr_grpo_denominator():
    # Σ masked = 7, over B=2 samples × constant length 4
    assert aggregate(VALUES, MASK, "constant_len", constant_len=4).item() == pytest.approx(7 / 8)


def test_constant_len_does_not_depend_on_response_length():
    short = aggregate(torch.ones(1, 4), torch.tensor([[1, 0, 0, 0]]), "constant_len", constant_len=4)
    long = aggregate(torch.ones(1, 4), torch.tensor([[1, 1, 1, 1]]), "constant_len", constant_len=4)
    assert long.item() == pytest.approx(4 * short.item())


@pytest.mark.parametrize("mode", ["sample_mean", "token_mean", "constant_len"])
def test_nan_in_masked_positions_does_not_leak(mode):
    poisoned = VALUES.clone()
    poisoned[~MASK.bool()] = float("nan")
    assert aggregate(poisoned, MASK, mode, constant_len=3) == aggregate(VALUES, MASK, mode, constant_len=3)


def test_sample_without_trained_tokens_counts_zero_but_counts_in_batch():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert aggregate(VALUES, mask).item() == pytest.approx(1.5 / 2)
    assert masked_mean(VALUES, torch.zeros_like(mask)).item() == 0.0


def test_token_mean_counts_an_all_masked_sample_once_as_slime():
    """slime's per-token denominator is Σ_i max(Σ_t m_it, 1): a sample with no trained token adds 1."""
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    denominator = max(2, 1) + max(0, 1) + max(2, 1)
    assert token_count(mask).item() == denominator == 5
    assert aggregate(values, mask, "token_mean").item() == pytest.approx((1 + 2 + 7 + 9) / denominator)
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 7 + 9) / 4)  # metrics: trained tokens only


def test_bool_and_float_masks_agree():
    assert aggregate(VALUES, MASK.bool()) == aggregate(VALUES, MASK.float())


def test_bad_mode_and_missing_constant_len_are_explained():
    with pytest.raises(ValueError, match="sample_mean, token_mean, constant_len"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="positive constant_len"):
        aggregate(VALUES, MASK, "constant_len")


def test_shape_mismatch_names_the_arguments():
    with pytest.raises(ValueError, match=r"a \(2, 3\), b \(2, 4\)"):
        require_same_shape(a=VALUES, b=torch.zeros(2, 4), c=None)
