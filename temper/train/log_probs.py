"""Per-token log-probs and entropy of the taken tokens, from final hidden states, in vocabulary chunks.

A [tokens × 150k-vocab] fp32 logits tensor for a packed micro-batch of 16k tokens is ~10 GB, so it is
never built: the lm-head matmul, log-softmax and entropy run over `chunk_size` tokens at a time, and
under autograd each chunk is checkpointed (recomputed in backward), so at most one chunk of logits is
alive in forward or backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Automatic chunking keeps one chunk's fp32 logits near 2**26 elements (256 MB).
AUTO_CHUNK_ELEMENTS = 2**26


def resolve_chunk_size(chunk_size: int | None, vocab_size: int) -> int:
    """Tokens per chunk: `chunk_size` when positive (--log-probs-chunk-size), else automatic."""
    if chunk_size is not None and chunk_size > 0:
        return chunk_size
    return max(1, AUTO_CHUNK_ELEMENTS // vocab_size)


def token_log_probs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(lm_head(h_t) / temperature)[target_t] for every row t, and optionally the entropy.

    hidden: [T, H] final hidden states (after the last norm), one row per predicted token;
    weight: [V, H] lm-head weight (bias [V] optional); targets: [T] int64 token ids.
    Logits are computed in the weight's dtype and upcast to fp32 before the softmax (as slime does
    with Megatron's bf16 output layer); entropy_t = logsumexp(z_t) − Σ_v softmax(z_t)_v · z_tv over
    the temperature-scaled logits z. Returns (log_probs [T] fp32, entropy [T] fp32 or None); both carry
    gradients into hidden and weight when those require grad.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden [T, H] and targets [T], got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    chunk = resolve_chunk_size(chunk_size, weight.shape[0])
    track = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    log_probs, entropies = [], []
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start : start + chunk], weight, bias, targets[start : start + chunk], temperature, with_entropy)
        if track:
            out = checkpoint(_chunk_log_probs, *args, use_reentrant=False)
        else:
            out = _chunk_log_probs(*args)
        log_probs.append(out[0])
        entropies.append(out[1])
    if not log_probs:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    entropy = torch.cat(entropies) if with_entropy else None
    return torch.cat(log_probs), entropy


def _chunk_log_probs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    logits = F.linear(hidden, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, targets[:, None]).squeeze(-1) - log_z
    if not with_entropy:
        return log_probs, log_probs.new_zeros(0)
    probs = torch.exp(logits - log_z[:, None])
    entropy = log_z - (probs * logits).sum(-1)
    return log_probs, entropy
