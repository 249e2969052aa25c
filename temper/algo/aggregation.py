"""Loss aggregation: how per-token values become one scalar.

Every loss in `temper.algo` works on padded tensors:

    values:    [B, T] float, one value per response token of B samples
    loss_mask: [B, T] bool or 0/1, 1 for trained tokens, 0 for tool/environment tokens and padding

Masked positions never reach the result: they are replaced by zero before any sum (not multiplied,
so a NaN or inf in padding cannot leak into the loss).
"""

import torch
from torch import Tensor

AGG_MODES = ("sample_mean", "token_mean", "constant_len")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Global token mean: Σ m_t·x_t / Σ m_t over all positions (0 when nothing is masked in).

    Used for metrics (pg_clipfrac, ppo_kl, tis, ...). It equals aggregate(mode="token_mean") unless a
    sample has no trained token, which the loss's denominator counts as one token (token_count).
    """
    return _zero_masked(values, mask).sum() / mask.sum().clamp(min=1)


def aggregate(
    values: Tensor,
    loss_mask: Tensor,
    mode: str = "sample_mean",
    *,
    constant_len: int | None = None,
) -> Tensor:
    """Reduce per-token values [B, T] to a scalar loss, in one of three modes.

    - `sample_mean` (default; slime's `get_sum_of_sample_mean`): (1/B) Σ_i Σ_t m_it·x_it / Σ_t m_it,
      the mean over samples of each sample's token mean. A sample with no trained token counts as 0
      in the numerator but still counts in B.
    - `token_mean` (slime's `--calculate-per-token-loss`): Σ_i Σ_t m_it·x_it / Σ_i max(Σ_t m_it, 1),
      slime's denominator (token_count): a sample with no trained token counts as one token.
    - `constant_len` (Dr.GRPO, Liu et al. 2025): Σ_i Σ_t m_it·x_it / (B · constant_len), with
      constant_len a fixed length such as the generation budget, so that no sample's tokens weigh
      more for being in a short response.

    Departure from slime: the default mode divides by each sample's own token count; slime divides by
    the token count of the sample's whole rollout (`rollout_mask_sums`), which differs only when one
    rollout is split into several samples.
    """
    masked = _zero_masked(values, loss_mask)
    num_samples = max(values.shape[0], 1)
    if mode == "sample_mean":
        per_sample = masked.sum(-1) / loss_mask.sum(-1).clamp(min=1)
        return per_sample.sum() / num_samples
    if mode == "token_mean":
        return masked.sum() / token_count(loss_mask).clamp(min=1)
    if mode == "constant_len":
        if constant_len is None or constant_len <= 0:
            raise ValueError(f"aggregate mode 'constant_len' needs a positive constant_len, got {constant_len!r}")
        return masked.sum() / (num_samples * constant_len)
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(AGG_MODES)}")


def token_count(loss_mask: Tensor) -> Tensor:
    """Σ_i max(Σ_t m_it, 1) over the rows of loss_mask [B, T]: the per-token loss's denominator, in
    which a sample with no trained token (e.g. removed) still counts once, as in slime."""
    return loss_mask.sum(-1).clamp(min=1).sum()


def _zero_masked(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def require_same_shape(**tensors: Tensor | None) -> None:
    """Raise a ValueError naming the arguments whose shapes differ (None arguments are skipped)."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected tensors of one shape [B, T], got {listed}")
