"""KL estimators between the policy and the reference model, per token and as a loss term.

Shapes: log-prob tensors are [B, T] float, one per response token (padded; see aggregation.py).
KL folded into rewards (`--kl-coef`) lives in advantages.py (`token_level_rewards`); this file holds
the estimators and the KL loss term (`--use-kl-loss --kl-loss-coef`).
"""

import torch
from torch import Tensor

from temper.algo.aggregation import aggregate, require_same_shape

KL_LOSS_TYPES = ("k1", "k2", "k3", "low_var_kl")


def compute_approx_kl(
    log_probs: Tensor,
    ref_log_probs: Tensor,
    kl_loss_type: str = "k1",
    importance_ratio: Tensor | None = None,
) -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from sampled-token log-probs (Schulman, "Approximating KL").

    With log_ratio = logp − ref:
      k1 = log_ratio;  k2 = log_ratio² / 2;  k3 = low_var_kl = exp(−log_ratio) − 1 + log_ratio
    (k3 is non-negative and unbiased). When `importance_ratio` is given (--use-unbiased-kl,
    DeepSeek-V3.2: exp(logp − old)), the estimate is multiplied by it; the ratio is not detached.
    `low_var_kl` is then clamped to [−10, 10]: slime's order (multiply, then clamp), so the weighted
    estimate, not only k3, stays within the bound.

    log_probs, ref_log_probs: [B, T] (any equal shape). Returns the same shape, in their dtype (slime
    upcasts to fp32; temper's log-probs are already fp32 by contract).
    """
    require_same_shape(log_probs=log_probs, ref_log_probs=ref_log_probs, importance_ratio=importance_ratio)
    log_ratio = log_probs - ref_log_probs
    if kl_loss_type == "k1":
        kl = log_ratio
    elif kl_loss_type == "k2":
        kl = log_ratio.square() / 2
    elif kl_loss_type in ("k3", "low_var_kl"):
        kl = torch.expm1(-log_ratio) + log_ratio
    else:
        raise ValueError(f"unknown kl_loss_type {kl_loss_type!r}; expected one of {', '.join(KL_LOSS_TYPES)}")
    if importance_ratio is not None:
        kl = importance_ratio * kl
    if kl_loss_type == "low_var_kl":
        kl = kl.clamp(min=-10, max=10)
    return kl


def compute_kl_loss(
    log_probs: Tensor,
    ref_log_probs: Tensor,
    loss_mask: Tensor,
    *,
    kl_loss_type: str = "k1",
    old_log_probs: Tensor | None = None,
    mode: str = "sample_mean",
) -> Tensor:
    """KL loss term (--use-kl-loss): agg(KL_est(logp, ref)), to be scaled by kl_loss_coef by the caller.

    Passing `old_log_probs` turns on the unbiased estimator (--use-unbiased-kl): each token's estimate
    is multiplied by exp(logp − old). `mode` is an aggregation mode (see aggregation.aggregate).
    Gradients flow into log_probs only through the estimator (and the ratio when unbiased).
    """
    importance_ratio = None if old_log_probs is None else torch.exp(log_probs - old_log_probs)
    kl = compute_approx_kl(log_probs, ref_log_probs, kl_loss_type, importance_ratio)
    require_same_shape(kl=kl, loss_mask=loss_mask)
    return aggregate(kl, loss_mask, mode)
