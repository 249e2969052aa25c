"""Triton kernels for the row-wise work of `log_probs.py` on one chunk of lm-head logits [C, V].

`row_stats` reads each row once (an online log-sum-exp per lane) and writes the token's log-prob,
the row's log-sum-exp and, optionally, its entropy; `row_grad` overwrites the logits with the
gradient of the loss with respect to them. Both stay in the logits' dtype in memory and compute in
float32, so a chunk costs one read (forward) or one read and one write (backward) of its logits,
where the PyTorch version moves several float32 copies. `log_probs.py` holds the PyTorch reference
of both (`stats_reference`, `grad_reference`) and checks the kernels against it once per process.

z = logits / temperature; lse = log Σ_v exp(z_v); log p_v = z_v − lse; H = −Σ_v p_v log p_v.
Gradients: ∂(log p_t)/∂z_v = [v = t] − p_v;  ∂H/∂z_v = −p_v (log p_v + H).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK = 2048
NUM_WARPS = 8
# The vocabulary size is a compile-time constant (one compilation per model): the loop bound the
# interpreter can run too.


@triton.jit
def _row_stats_kernel(logits, stride, targets, log_probs, lse_out, entropy, inv_temp, V: tl.constexpr,
                      WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    base = logits + row * stride
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    sz = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + lanes
        valid = cols < V
        z = tl.load(base + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, z)
        scale = tl.where(m == m_new, 1.0, tl.exp(m - m_new))
        e = tl.where(valid, tl.exp(z - m_new), 0.0)
        s = s * scale + e
        if WITH_ENTROPY:
            sz = sz * scale + tl.where(valid, e * z, 0.0)
        m = m_new
    top = tl.max(m, axis=0)
    weight = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
    total = tl.sum(s * weight, axis=0)
    lse = top + tl.log(total)
    target = tl.load(targets + row)
    z_target = tl.load(base + target).to(tl.float32) * inv_temp
    tl.store(log_probs + row, z_target - lse)
    tl.store(lse_out + row, lse)
    if WITH_ENTROPY:
        tl.store(entropy + row, lse - tl.sum(sz * weight, axis=0) / total)


@triton.jit
def _row_grad_kernel(logits, stride, targets, lse_in, entropy, grad_lp, grad_entropy, inv_temp, V: tl.constexpr,
                     WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    base = logits + row * stride
    lanes = tl.arange(0, BLOCK)
    lse = tl.load(lse_in + row)
    g_lp = tl.load(grad_lp + row)
    target = tl.load(targets + row)
    if WITH_ENTROPY:
        h = tl.load(entropy + row)
        g_h = tl.load(grad_entropy + row)
    for start in range(0, V, BLOCK):
        cols = start + lanes
        valid = cols < V
        log_p = tl.load(base + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp - lse
        p = tl.exp(log_p)
        g = -g_lp * p
        if WITH_ENTROPY:
            g -= g_h * p * (log_p + h)
        g = tl.where(cols == target, g + g_lp, g) * inv_temp
        tl.store(base + cols, g.to(logits.dtype.element_ty), mask=valid)


def row_stats(logits: Tensor, targets: Tensor, temperature: float, log_probs: Tensor, lse: Tensor,
              entropy: Tensor | None) -> None:  # fmt: skip
    """Write log p_target [C], lse [C] (and H [C]) of `logits` [C, V] (unit stride in V) into the outputs."""
    rows, vocab = logits.shape
    if rows == 0:
        return
    _row_stats_kernel[(rows,)](
        logits, logits.stride(0), targets, log_probs, lse, entropy if entropy is not None else lse,
        1.0 / temperature, vocab, WITH_ENTROPY=entropy is not None, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip


def row_grad(logits: Tensor, targets: Tensor, temperature: float, lse: Tensor, entropy: Tensor | None,
             grad_lp: Tensor, grad_entropy: Tensor | None) -> Tensor:  # fmt: skip
    """Overwrite `logits` [C, V] with ∂loss/∂logits given the upstream grads [C]; returns `logits`."""
    rows, vocab = logits.shape
    if rows == 0:
        return logits
    with_entropy = grad_entropy is not None
    _row_grad_kernel[(rows,)](
        logits, logits.stride(0), targets, lse, entropy if with_entropy else lse, grad_lp,
        grad_entropy if with_entropy else grad_lp, 1.0 / temperature, vocab,
        WITH_ENTROPY=with_entropy, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
    return logits
