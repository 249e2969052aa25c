"""Train/inference mismatch correction: importance weights of the trainer's old policy against the
rollout engine's log-probs (--use-tis), per token on padded [B, T] tensors."""

import torch
from torch import Tensor

from temper.algo.aggregation import masked_mean, require_same_shape

TIS_MODES = ("truncate", "icepop")


def compute_tis_weights(
    old_log_probs: Tensor,
    rollout_log_probs: Tensor,
    loss_mask: Tensor,
    *,
    tis_clip: float = 2.0,
    tis_clip_low: float = 0.0,
    tis_mode: str = "truncate",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Importance weights w_t = exp(old_t − rollout_t) that the caller multiplies into pg_loss_t.

    - `truncate` (truncated IS, Yao et al. 2025; slime's `vanilla_tis_function`):
      weight_t = clamp(w_t, tis_clip_low, tis_clip).
    - `icepop` (IcePop, Ling team 2025; slime's `icepop_function`): weight_t = w_t inside
      [tis_clip_low, tis_clip], 0 outside, which masks the token out of the numerator while the
      loss's denominator keeps it.

    Weights are detached: they rescale the gradient, never carry one. All inputs [B, T].
    Returns (weights [B, T], metrics) with masked token means `tis` (mean w), `tis_clipfrac`
    (fraction of tokens whose weight differs from w) and `tis_abs` (mean |w − 1|).
    """
    require_same_shape(old_log_probs=old_log_probs, rollout_log_probs=rollout_log_probs, loss_mask=loss_mask)
    ratio = torch.exp(old_log_probs - rollout_log_probs).detach()
    if tis_mode == "truncate":
        weights = ratio.clamp(min=tis_clip_low, max=tis_clip)
    elif tis_mode == "icepop":
        inside = (ratio >= tis_clip_low) & (ratio <= tis_clip)
        weights = torch.where(inside, ratio, ratio.new_zeros(()))
    else:
        raise ValueError(f"unknown tis_mode {tis_mode!r}; expected one of {', '.join(TIS_MODES)}")
    metrics = {
        "tis": masked_mean(ratio, loss_mask),
        "tis_clipfrac": masked_mean((weights != ratio).to(ratio.dtype), loss_mask),
        "tis_abs": masked_mean((ratio - 1).abs(), loss_mask),
    }
    return weights, metrics
