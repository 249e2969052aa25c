"""The glue of multi-head latent attention between its GEMMs, as one launch (kernel group "layers").

`deepseek_v3.LatentAttention` builds, per token, the query ``[q_latent, RoPE(q_rope)]`` of every head and the
cache entry ``[RMSNorm(c), RoPE(k_rope)]`` (see that module's docstring). In PyTorch that is 26 small kernels
a layer: the even/odd gather of the rope columns (``rope_interleave``, 2), RoPE for q and for k (index
cos/sin, casts, products, rotate_half's negation and concatenation, the sum: 14), kv_a_layernorm (8) and two
concatenations; with the W_UK / W_UV einsums (a bmm each, and a copy for the second's reshape) 29 ops between
the projections and the attention (CPU profile of one decode token at Moonlight's widths), where the fused
forward runs 3: bmm, `latent_prep`, bmm. `latent_prep` reads q's rope columns, the absorbed query ``q_latent``
(W_UK's batched GEMM output, read through its strides), and kv_a_proj_with_mqa's output once, and writes the
two results; the interleave is a strided load (even columns into the first half, odd into the second).

Rounding is the reference's: cos/sin cast to the activation dtype, ``q * cos`` and ``rotate_half(q) *
sin`` each rounded, their sum rounded (`RotaryEmbedding`); RMSNorm normalises in float32, rounds, then
multiplies by its weight and rounds (`layers.RMSNorm`). So the rope columns and the q_latent columns are
bit-equal to the reference in bf16/fp16 (float32: up to the GPU contracting ``x1 * c + (-x2 * s)`` into
an FMA), and the normalised latent differs from it only through the float32 sum of squares' order (as
`elementwise.add_rms_norm` does: a rare last-bit difference in bf16).

Why "layers" and not "attention": this is per-token elementwise work of the same kind as the fused q/k
norm + RoPE (`elementwise.qk_norm_rope_`), independent of which attention backend serves the entry.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from temper.engine.kernels.common import next_pow2, round_code, round_to


@triton.jit
def _rope_pair(src, c, s, d, dmask, HALF: tl.constexpr, INTERLEAVE: tl.constexpr, ROUND: tl.constexpr):
    """The two rotated halves of the rope columns at `src` (interleaved: the even then the odd columns)."""
    if INTERLEAVE:
        x1 = tl.load(src + 2 * d, mask=dmask, other=0.0).to(tl.float32)
        x2 = tl.load(src + 2 * d + 1, mask=dmask, other=0.0).to(tl.float32)
    else:
        x1 = tl.load(src + d, mask=dmask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + d, mask=dmask, other=0.0).to(tl.float32)
    # q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-x2, x1), each product and the sum rounded
    o1 = round_to(round_to(x1 * c, ROUND) + round_to(-x2 * s, ROUND), ROUND)
    o2 = round_to(round_to(x2 * c, ROUND) + round_to(x1 * s, ROUND), ROUND)
    return o1, o2


@triton.jit
def _latent_prep_kernel(q_ptr, ql_ptr, kv_ptr, pos_ptr, cos_ptr, sin_ptr, w_ptr, query_ptr, entry_ptr,
                        stride_qt, stride_qh, stride_lt, stride_lh, stride_kv, stride_cos, eps, H,
                        RANK: tl.constexpr, RANK_P: tl.constexpr, HALF: tl.constexpr,
                        HALF_P: tl.constexpr, INTERLEAVE: tl.constexpr, ROUND: tl.constexpr):
    """Program (t, h): head h's query row of token t, or (t, H) the token's cache entry. q_ptr points at
    q's rope columns (the nope width is no compile-time constant: one kernel serves every model)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    width = RANK + 2 * HALF
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF_P)
    dmask = d < HALF
    c = round_to(tl.load(cos_ptr + pos * stride_cos + d, mask=dmask, other=0.0).to(tl.float32), ROUND)
    s = round_to(tl.load(sin_ptr + pos * stride_cos + d, mask=dmask, other=0.0).to(tl.float32), ROUND)
    r = tl.arange(0, RANK_P)
    rmask = r < RANK
    if h < H:
        o1, o2 = _rope_pair(q_ptr + t * stride_qt + h * stride_qh, c, s, d, dmask, HALF, INTERLEAVE, ROUND)
        latent = tl.load(ql_ptr + t * stride_lt + h * stride_lh + r, mask=rmask)
        dst = query_ptr + (t * H + h) * width
        tl.store(dst + r, latent, mask=rmask)
    else:
        src = kv_ptr + t * stride_kv
        x = tl.load(src + r, mask=rmask, other=0.0).to(tl.float32)
        var = tl.sum(x * x, 0) / RANK
        w = tl.load(w_ptr + r, mask=rmask, other=0.0).to(tl.float32)
        normed = round_to(w * round_to(x * tl.rsqrt(var + eps), ROUND), ROUND)
        o1, o2 = _rope_pair(src + RANK, c, s, d, dmask, HALF, INTERLEAVE, ROUND)
        dst = entry_ptr + t * width
        tl.store(dst + r, normed.to(entry_ptr.dtype.element_ty), mask=rmask)
    tl.store(dst + RANK + d, o1.to(query_ptr.dtype.element_ty), mask=dmask)
    tl.store(dst + RANK + HALF + d, o2.to(query_ptr.dtype.element_ty), mask=dmask)


def latent_prep(q: torch.Tensor, q_latent: torch.Tensor, kv: torch.Tensor, positions: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                interleave: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent attention's query and cache entry in one launch.

    q [T, H, nope + rope] (the q projection viewed; its first nope columns are not read), q_latent [T, H,
    rank] (any strides: W_UK's bmm output [H, T, rank] transposed is a view), kv [T, rank + rope]
    (kv_a_proj_with_mqa's output), positions [T], cos/sin [max_len, rope] float32 with equal halves
    (`RotaryEmbedding`'s, attention factor included; a table already in the activation dtype works too),
    kv_a_layernorm's weight [rank] and eps; `interleave`: the rope columns' pairs are (2i, 2i + 1) and are
    gathered even-then-odd first. Every last dim must be contiguous. Returns (query [T, H, rank + rope], entry
    [T, 1, rank + rope]), both in q's dtype: [q_latent, RoPE(q_rope)] and [RMSNorm(c), RoPE(k_rope)].
    """
    tokens, heads, _ = q.shape
    rank = q_latent.shape[-1]
    rope = kv.shape[-1] - rank
    if rope <= 0 or rope % 2 or cos.shape[-1] != rope or q.shape[-1] <= rope:
        raise ValueError(f"latent_prep: q {tuple(q.shape)}, q_latent {tuple(q_latent.shape)}, kv {tuple(kv.shape)} "
                         f"and cos {tuple(cos.shape)} do not give one even rope width")
    if q_latent.dtype != q.dtype or kv.dtype != q.dtype:
        raise ValueError(f"latent_prep: q ({q.dtype}), q_latent ({q_latent.dtype}) and kv ({kv.dtype}) must share "
                         "the activation dtype")
    if any(x.stride(-1) != 1 for x in (q, q_latent, kv, cos, sin, norm_weight)):
        raise ValueError("latent_prep: the last dim of q, q_latent, kv, cos, sin and the norm weight must be "
                         "contiguous (pass views of the projections' outputs)")
    query = torch.empty(tokens, heads, rank + rope, dtype=q.dtype, device=q.device)
    entry = torch.empty(tokens, 1, rank + rope, dtype=q.dtype, device=q.device)
    if tokens:
        _latent_prep_kernel[(tokens, heads + 1)](
            q[..., -rope:], q_latent, kv, positions, cos, sin, norm_weight, query, entry, q.stride(0), q.stride(1),
            q_latent.stride(0), q_latent.stride(1), kv.stride(0), cos.stride(0), eps, heads,
            RANK=rank, RANK_P=next_pow2(rank), HALF=rope // 2,
            HALF_P=next_pow2(rope // 2), INTERLEAVE=interleave, ROUND=round_code(q.dtype), num_warps=4,
        )
    return query, entry
