"""Per-token log-probs and entropy of the taken tokens, from final hidden states, in token chunks.

A [tokens × 150k-vocab] fp32 logits tensor for a packed micro-batch of 16k tokens is ~10 GB, so it is
never built. `token_log_probs` is one autograd function: forward runs the lm-head matmul over
`chunk_size` tokens at a time and keeps only three numbers per token (log-prob, log-sum-exp,
entropy); backward recomputes each chunk's logits, turns them into their gradient in place and
multiplies back into the hidden states and the weight. At most one chunk of logits is alive, in the
weight's dtype. On CUDA the row-wise work runs in Triton kernels (logit_kernels.py: one pass over a
chunk forward, one read and write backward); elsewhere in PyTorch (`stats_reference`,
`grad_reference`), against which the kernels are checked once per process before first use.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# Automatic chunking keeps one chunk's logits near 2**26 elements (128 MB in bf16).
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
    Logits are computed in the weight's dtype and read in fp32 (as slime does with Megatron's bf16
    output layer); entropy_t = logsumexp(z_t) − Σ_v softmax(z_t)_v · z_tv over the temperature-scaled
    logits z. Returns (log_probs [T] fp32, entropy [T] fp32 or None); both carry gradients into
    hidden, weight and bias when those require grad.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden [T, H] and targets [T], got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    chunk = resolve_chunk_size(chunk_size, weight.shape[0])
    log_probs, entropy = _LinearLogProbs.apply(hidden, weight, bias, targets, float(temperature), chunk, with_entropy)
    return log_probs, (entropy if with_entropy else None)


class _LinearLogProbs(torch.autograd.Function):
    """(log_probs [T], entropy [T] or empty) of `token_log_probs`, chunk by chunk (module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, with_entropy):
        rows = hidden.shape[0]
        log_probs = hidden.new_empty(rows, dtype=torch.float32)
        lse = torch.empty_like(log_probs)
        entropy = torch.empty_like(log_probs) if with_entropy else log_probs.new_empty(0)
        stats = _row_functions(hidden.device)[0]
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
            logits = F.linear(hidden[part], weight, bias)
            stats(logits, targets[part], temperature, log_probs[part], lse[part], entropy[part] if with_entropy else None)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.with_entropy = temperature, chunk, with_entropy
        ctx.set_materialize_grads(False)  # a detached entropy sends None, and its term is skipped
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return log_probs, entropy

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias) if need_bias else None
        if grad_log_probs is None:
            grad_log_probs = torch.zeros_like(lse)
        if not ctx.with_entropy:
            grad_entropy = None
        grad_fn = _row_functions(hidden.device)[1]
        for start in range(0, hidden.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            h = hidden[part]
            g_ent = grad_entropy[part] if grad_entropy is not None else None
            g = grad_fn(F.linear(h, weight, bias), targets[part], ctx.temperature, lse[part],
                        entropy[part] if g_ent is not None else None, grad_log_probs[part], g_ent)  # fmt: skip
            if need_hidden:
                torch.mm(g, weight, out=grad_hidden[part])
            if need_weight:
                grad_weight.addmm_(g.t(), h)
            if need_bias:
                grad_bias += g.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


# -- row-wise work: PyTorch reference and the CUDA kernels ------------------------------------------


def stats_reference(logits, targets, temperature, log_probs, lse, entropy) -> None:
    """PyTorch version of `logit_kernels.row_stats` (same contract)."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse.copy_(torch.logsumexp(z, dim=-1))
    log_probs.copy_(z.gather(-1, targets[:, None]).squeeze(-1) - lse)
    if entropy is not None:
        entropy.copy_(lse - (torch.softmax(z, dim=-1) * z).sum(-1))


def grad_reference(logits, targets, temperature, lse, entropy, grad_lp, grad_entropy) -> Tensor:
    """PyTorch version of `logit_kernels.row_grad`: ∂loss/∂logits in the logits' dtype."""
    log_p = logits.float()
    if temperature != 1.0:
        log_p = log_p / temperature
    log_p = log_p - lse[:, None]
    p = log_p.exp()
    grad = p * -grad_lp[:, None]
    if grad_entropy is not None:
        grad -= grad_entropy[:, None] * p * (log_p + entropy[:, None])
    grad.scatter_add_(1, targets[:, None], grad_lp[:, None].float())
    if temperature != 1.0:
        grad /= temperature
    return grad.to(logits.dtype)


def _row_functions(device: torch.device):
    """(stats, grad) for tensors on `device`: the Triton kernels on CUDA, else the references."""
    if device.type == "cuda" and _kernels_checked(device.index if device.index is not None else 0):
        from temper.train import logit_kernels

        return logit_kernels.row_stats, logit_kernels.row_grad
    return stats_reference, grad_reference


@functools.cache
def _kernels_checked(device_index: int) -> bool:
    """Run both kernels once against the references on random bf16 rows; RuntimeError if they differ."""
    from temper.train import logit_kernels

    device = torch.device("cuda", device_index)
    g = torch.Generator(device=device).manual_seed(0)
    rows, vocab = 7, 5003
    logits = (torch.randn(rows, vocab, device=device, generator=g) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,), device=device, generator=g)
    upstream = [torch.randn(rows, device=device, generator=g) for _ in range(2)]
    want = [torch.empty(rows, device=device) for _ in range(3)]
    got = [torch.empty(rows, device=device) for _ in range(3)]
    stats_reference(logits, targets, 0.7, *want)
    logit_kernels.row_stats(logits, targets, 0.7, *got)
    grad_want = grad_reference(logits, targets, 0.7, want[1], want[2], *upstream).float()
    grad_got = logit_kernels.row_grad(logits.clone(), targets, 0.7, got[1], got[2], *upstream).float()
    errors = [(a - b).abs().max().item() for a, b in zip(got, want)]
    errors.append(((grad_got - grad_want).norm() / grad_want.norm()).item())
    if max(errors[:3]) > 1e-3 or errors[3] > 1e-2:
        raise RuntimeError(f"temper.train.logit_kernels disagree with the PyTorch reference on this GPU: {errors}")
    return True
