"""Fused per-token kernels of the decoder layer: residual add + RMSNorm, q/k RMSNorm + RoPE (+ the KV-cache
write), SiLU-and-mul.

Each kernel replaces a chain of PyTorch ops (RMSNorm alone is six) with one pass over the row, and
rounds to the activation dtype at the same points as the reference modules in `models/layers.py` and
`models/rotary.py` do (HF's order: normalise in float32, cast, then scale in the activation dtype),
so that the fast path computes the same numbers up to float32 summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from temper.engine.kernels.common import next_pow2, round_code, round_to
from temper.engine.kernels.paged_attention import cache_strides, slot_offsets


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, stride_x, stride_r, stride_o, stride_ro,
                         n_cols, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr, ROUND: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        x = round_to(x + r, ROUND)
        tl.store(res_out_ptr + row * stride_ro + cols, x.to(res_out_ptr.dtype.element_ty), mask=mask)
    var = tl.sum(x * x, 0) / n_cols
    y = round_to(x * tl.rsqrt(var + eps), ROUND)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, round_to(w * y, ROUND).to(out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """RMSNorm(x + residual) * weight over the last dim of [T, N] rows.

    Returns (normed, x + residual) with a residual, else normed alone (the input becomes the residual).
    """
    rows, n = x.shape
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    if rows:
        res = residual if residual is not None else x
        _add_rms_norm_kernel[(rows,)](
            x, res, weight, out, res_out, x.stride(0), res.stride(0), out.stride(0), res_out.stride(0), n, eps,
            HAS_RES=residual is not None, BLOCK=next_pow2(n), ROUND=round_code(x.dtype),
            num_warps=4 if n <= 2048 else 8,
        )
    return (out, res_out) if residual is not None else out


@triton.jit
def _rope_heads(base, w_ptr, c, s, eps, H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr,
                QK_NORM: tl.constexpr, ROUND: tl.constexpr):
    """H heads of D values at `base` after the optional RMSNorm per head and rotate-half RoPE: the two
    rotated halves [HP, D / 2] (float32, rounded to the activation dtype). Loads only: the caller
    stores, after every load of the row (the stores could alias them, so the compiler would otherwise
    wait for each store before the next load)."""
    HALF: tl.constexpr = D // 2
    h = tl.arange(0, HP)
    d = tl.arange(0, HALF)
    mask = (h < H)[:, None]
    p1 = base + h[:, None] * D + d[None, :]
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32)
    if QK_NORM:
        var = (tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / D
        r = tl.rsqrt(var + eps)[:, None]
        w1 = tl.load(w_ptr + d).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + HALF + d).to(tl.float32)[None, :]
        x1 = round_to(w1 * round_to(x1 * r, ROUND), ROUND)
        x2 = round_to(w2 * round_to(x2 * r, ROUND), ROUND)
    # q * cos + rotate_half(q) * sin, with rotate_half(q) = cat(-x2, x1), each product rounded.
    o1 = round_to(round_to(x1 * c, ROUND) + round_to(-x2 * s, ROUND), ROUND)
    o2 = round_to(round_to(x2 * c, ROUND) + round_to(x1 * s, ROUND), ROUND)
    return o1, o2


@triton.jit
def _store_halves(base, o1, o2, H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr):
    h = tl.arange(0, HP)
    d = tl.arange(0, D // 2)
    mask = (h < H)[:, None]
    p1 = base + h[:, None] * D + d[None, :]
    tl.store(p1, o1.to(base.dtype.element_ty), mask=mask)
    tl.store(p1 + D // 2, o2.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(qkv_ptr, pos_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, slot_ptr, stride_t,
                         stride_cos, eps, HQ: tl.constexpr, HQP: tl.constexpr, HKV: tl.constexpr,
                         HKVP: tl.constexpr, D: tl.constexpr, QK_NORM: tl.constexpr, ROUND: tl.constexpr,
                         STORE_KV: tl.constexpr, PAGE: tl.constexpr, BLOCK_STRIDE: tl.constexpr,
                         TOKEN_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, D // 2)
    c = round_to(tl.load(cos_ptr + pos * stride_cos + d), ROUND)[None, :]
    s = round_to(tl.load(sin_ptr + pos * stride_cos + d), ROUND)[None, :]
    base = qkv_ptr + t * stride_t
    q1, q2 = _rope_heads(base, qw_ptr, c, s, eps, HQ, HQP, D, QK_NORM, ROUND)
    k1, k2 = _rope_heads(base + HQ * D, kw_ptr, c, s, eps, HKV, HKVP, D, QK_NORM, ROUND)
    h = tl.arange(0, HKVP)
    kv_mask = (h < HKV)[:, None]
    if STORE_KV:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        src = base + (HQ + HKV) * D + h[:, None] * D + d[None, :]
        v1 = tl.load(src, mask=kv_mask)
        v2 = tl.load(src + D // 2, mask=kv_mask)
    _store_halves(base, q1, q2, HQ, HQP, D)
    _store_halves(base + HQ * D, k1, k2, HKV, HKVP, D)
    if STORE_KV:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if slot >= 0:  # the token's rotated K and its V into its cache slot (slot < 0: a padding row)
            dst = slot_offsets(slot, h, d, PAGE, BLOCK_STRIDE, TOKEN_STRIDE, HEAD_STRIDE)
            tl.store(kc_ptr + dst, k1.to(kc_ptr.dtype.element_ty), mask=kv_mask)
            tl.store(kc_ptr + dst + D // 2, k2.to(kc_ptr.dtype.element_ty), mask=kv_mask)
            tl.store(vc_ptr + dst, v1, mask=kv_mask)
            tl.store(vc_ptr + dst + D // 2, v2, mask=kv_mask)


def qk_norm_rope_(qkv: torch.Tensor, positions: torch.Tensor, q_weight: torch.Tensor | None,
                  k_weight: torch.Tensor | None, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                  num_heads: int, num_kv_heads: int, head_dim: int,
                  kv_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """In place on the q and k columns of qkv [T, (Hq + 2 Hkv) * D] (rows may be strided): per-head
    RMSNorm (when the weights are given) then RoPE at `positions` [T], with cos/sin [max_len, D] float32
    tables whose two halves are equal (rotate-half layout). With `kv_cache` = (k_cache, v_cache,
    slot_mapping [T]) each token's rotated K and its V are also written to its cache slot (as
    `paged_attention.store_kv` would, in the same launch)."""
    tokens = qkv.shape[0]
    if not tokens:
        return
    qk_norm = q_weight is not None
    if kv_cache is not None:
        k_cache, v_cache, slots = kv_cache
        cache = {"STORE_KV": True, "PAGE": k_cache.shape[1], **cache_strides(k_cache, v_cache)}
    else:
        k_cache = v_cache = slots = qkv
        cache = {"STORE_KV": False, "PAGE": 1, "BLOCK_STRIDE": 0, "TOKEN_STRIDE": 0, "HEAD_STRIDE": 0}
    _qk_norm_rope_kernel[(tokens,)](
        qkv, positions, q_weight if qk_norm else cos, k_weight if qk_norm else cos, cos, sin, k_cache, v_cache, slots,
        qkv.stride(0), cos.stride(0), eps, HQ=num_heads, HQP=next_pow2(num_heads), HKV=num_kv_heads,
        HKVP=next_pow2(num_kv_heads), D=head_dim, QK_NORM=qk_norm, ROUND=round_code(qkv.dtype), **cache, num_warps=4,
    )


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n_cols, BLOCK: tl.constexpr, ROUND: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    act = round_to(gate / (1.0 + tl.exp(-gate)), ROUND)
    tl.store(out_ptr + row * stride_o + cols, round_to(act * up, ROUND).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2N] (gate | up) -> silu(gate) * up, [T, N]."""
    rows, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    if rows:
        block = min(1024, next_pow2(n))
        _silu_and_mul_kernel[(rows, triton.cdiv(n, block))](
            gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block, ROUND=round_code(gate_up.dtype),
            num_warps=4,
        )
    return out
