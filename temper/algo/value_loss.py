"""Clipped value loss for the PPO critic, on padded [B, T] tensors (one value per response token)."""

import torch
from torch import Tensor

from temper.algo.aggregation import aggregate, masked_mean, require_same_shape


def compute_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    value_clip: float,
) -> tuple[Tensor, Tensor]:
    """PPO clipped value loss, per token (slime's `value_loss_function`; Schulman et al. 2017):

        v_clip = old_v + clamp(v − old_v, −value_clip, value_clip)
        loss_t = max((v_clip − R_t)², (v − R_t)²)

    No ½ factor, as in slime. values (carry the gradient), old_values, returns: [B, T].
    Returns (losses, clipfrac), both [B, T]; clipfrac is 1.0 where |v − old_v| > value_clip.
    """
    require_same_shape(values=values, old_values=old_values, returns=returns)
    delta = values - old_values
    clipped_values = old_values + delta.clamp(-value_clip, value_clip)
    losses = torch.maximum((clipped_values - returns).square(), (values - returns).square())
    clipfrac = (delta.abs() > value_clip).to(losses.dtype)
    return losses, clipfrac


def value_loss_function(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    loss_mask: Tensor,
    *,
    value_clip: float = 0.2,
    calculate_per_token_loss: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The critic's loss: agg(compute_value_loss) over trained tokens.

    agg is the per-sample token mean averaged over samples, or the global token mean with
    calculate_per_token_loss. Returns (loss, metrics) with detached `value_loss` and
    `value_clipfrac` (masked token mean).
    """
    require_same_shape(values=values, loss_mask=loss_mask)
    losses, clipfrac = compute_value_loss(values, old_values, returns, value_clip)
    mode = "token_mean" if calculate_per_token_loss else "sample_mean"
    loss = aggregate(losses, loss_mask, mode)
    metrics = {"value_loss": loss.detach(), "value_clipfrac": masked_mean(clipfrac, loss_mask).detach()}
    return loss, metrics
