"""Supervised fine-tuning loss over padded [B, T] response-token log-probs."""

from torch import Tensor

from temper.algo.aggregation import aggregate, require_same_shape


def sft_loss_function(
    log_probs: Tensor,
    loss_mask: Tensor,
    *,
    calculate_per_token_loss: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SFT (--loss-type sft_loss): negative log-likelihood, loss = −agg(logp_t) over trained tokens.

    agg is the per-sample token mean averaged over samples, or the global token mean with
    calculate_per_token_loss (slime's SFT recipe turns that on). log_probs, loss_mask: [B, T].
    Returns (loss, metrics) with detached `sft_loss`.
    """
    require_same_shape(log_probs=log_probs, loss_mask=loss_mask)
    mode = "token_mean" if calculate_per_token_loss else "sample_mean"
    loss = -aggregate(log_probs, loss_mask, mode)
    return loss, {"sft_loss": loss.detach()}
