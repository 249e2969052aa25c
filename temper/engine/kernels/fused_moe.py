"""Fused mixture-of-experts experts (kernel group "fused_moe"): `moe.dispatch_loop`'s weighted sum over each
token's top-k SwiGLU experts as four Triton launches, with no host reads and shapes that depend on the
token count only (so a decode step with it can be captured in a CUDA graph).

1. `_align_kernel`, one program per expert: the (token, slot) pairs grouped by expert (ascending pair index
   within an expert), each expert's run padded to BLOCK_M rows, and a table of each M block's expert and
   valid row count. Blocks past the last expert's run get expert -1 and do nothing. Their number is bounded
   by ``(P + min(E, P) * (BLOCK_M - 1)) // BLOCK_M`` for P = T x top_k pairs: an expert with c > 0 pairs
   takes ceil(c / BLOCK_M) blocks, at most (c + BLOCK_M - 1) / BLOCK_M, and at most min(E, P) experts have any.
2. `_gate_up_kernel`, a program per (M block, N tile of the intermediate size): the block's rows gathered
   from x by token index (no copy of x), times both the gate and the up rows of the same columns of the
   block's expert, so the epilogue writes silu(gate) * up. Each expert's weight tile is read once per M
   block, which is what a decode step (a few rows per expert, nearly every expert touched) is bound by.
3. `_down_kernel`, a program per (M block, N tile of hidden): hidden @ w_down[e]^T times the pair's routing
   weight, written to a per-pair buffer [T x top_k, hidden] at the pair's own (token, slot) row.
4. `_sum_slots_kernel`, a program per (token, N tile): each token's top_k rows added in ascending expert
   order (a rank computed in the kernel, ties in slot order), rounding after each add.

Rounding follows the reference path exactly where it rounds (`dispatch_grouped` / `dispatch_loop` in the
activation dtype): both GEMMs accumulate in float32; gate and up are rounded to the activation dtype, then
silu(gate), then its product with up (`layers.silu_and_mul` of the bf16 GEMM output); the down GEMM's output
is rounded, multiplied by the routing weight in float32 (exact for a bf16 or float32 weight) and rounded
(``(y * w).to(x.dtype)``); each add of the slot sum rounds. What differs is only the order of the float32
sums inside the GEMMs, so bf16 results equal the reference's except where that order moves a value across
a rounding boundary. float32 inputs use IEEE float32 products (no tf32).

Tiles: `FUSED_MOE_CONFIGS` (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); `pick_config` takes
`DECODE_CONFIG` (BLOCK_M 16) while the pairs per expert are few, `PREFILL_CONFIG` (64) between, and
`LARGE_PREFILL_CONFIG` (128) from 128 pairs per expert.
`benchmarks/moe_kernel.py` times each of them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from temper.engine.kernels.common import mma, next_pow2, round_code, round_to

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); one tile serves both GEMMs of a call.
FUSED_MOE_CONFIGS = (
    (16, 64, 128, 4, 4),
    (16, 32, 128, 4, 4),
    (16, 128, 64, 4, 4),
    (32, 64, 128, 4, 4),
    (64, 128, 64, 8, 3),
    (128, 128, 64, 8, 3),
)
DECODE_CONFIG, PREFILL_CONFIG, LARGE_PREFILL_CONFIG = FUSED_MOE_CONFIGS[0], FUSED_MOE_CONFIGS[4], FUSED_MOE_CONFIGS[5]
DECODE_PAIRS_PER_EXPERT = 32  # up to this many (token, slot) pairs per expert on average: the decode tile
# from this many pairs per expert on average, the 128-row tile: on an H100 10-15% faster than the 64-row one at 128
# and 192 (benchmarks/RESULTS.md, session 19)
LARGE_PAIRS_PER_EXPERT = 128
ALIGN_CHUNK = 1024  # pairs the alignment kernel reads per step


def pick_config(num_tokens: int, top_k: int, num_experts: int) -> tuple[int, int, int, int, int]:
    """The tile for T tokens by the pairs per expert, T x top_k / E: `DECODE_CONFIG` up to
    `DECODE_PAIRS_PER_EXPERT`, `LARGE_PREFILL_CONFIG` from `LARGE_PAIRS_PER_EXPERT`, else `PREFILL_CONFIG`."""
    pairs = num_tokens * top_k
    if pairs <= DECODE_PAIRS_PER_EXPERT * num_experts:
        return DECODE_CONFIG
    return LARGE_PREFILL_CONFIG if pairs >= LARGE_PAIRS_PER_EXPERT * num_experts else PREFILL_CONFIG


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """The most M blocks `align` can produce for `num_pairs` pairs (module docstring, step 1)."""
    return (num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m


@triton.jit
def _align_kernel(ids_ptr, pairs_ptr, block_expert_ptr, block_rows_ptr, num_pairs, num_blocks,
                  BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, E_POW2: tl.constexpr):
    expert = tl.program_id(0)
    offs = tl.arange(0, CHUNK)
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_pairs, CHUNK):
        ids = tl.load(ids_ptr + start + offs, mask=start + offs < num_pairs, other=0).to(tl.int32)
        # the lanes past the end read expert 0: taken back (histogram's mask argument is recent)
        counts += tl.histogram(ids, E_POW2) - tl.where(experts == 0, tl.maximum(start + CHUNK - num_pairs, 0), 0)
    blocks = (counts + BLOCK_M - 1) // BLOCK_M
    first = tl.cumsum(blocks, 0) - blocks  # each expert's first block
    mine = experts == expert
    my_first, my_count = tl.sum(tl.where(mine, first, 0)), tl.sum(tl.where(mine, counts, 0))
    block_offs = tl.arange(0, BLOCK_M)
    for b0 in range(0, tl.cdiv(my_count, BLOCK_M), BLOCK_M):  # this expert's rows of the block table
        b = b0 + block_offs
        ok = b * BLOCK_M < my_count
        tl.store(block_expert_ptr + my_first + b, tl.zeros_like(b) + expert, mask=ok)
        tl.store(block_rows_ptr + my_first + b, tl.minimum(my_count - b * BLOCK_M, BLOCK_M), mask=ok)
    if my_count > 0:
        seen = my_count * 0  # an int32 tensor, as the loop carries it
        for start in range(0, num_pairs, CHUNK):
            ok = start + offs < num_pairs
            hit = (tl.load(ids_ptr + start + offs, mask=ok, other=-1).to(tl.int32) == expert) & ok
            rank = seen + tl.cumsum(hit.to(tl.int32), 0) - 1
            tl.store(pairs_ptr + my_first * BLOCK_M + rank, start + offs, mask=hit)
            seen += tl.sum(hit.to(tl.int32))
    if expert == 0:  # the blocks past the last expert's: none
        for b0 in range(tl.sum(blocks), num_blocks, CHUNK):
            b = b0 + offs
            tl.store(block_expert_ptr + b, tl.full([CHUNK], -1, tl.int32), mask=b < num_blocks)


@triton.jit
def _block_rows(pairs_ptr, block_expert_ptr, block_rows_ptr, BLOCK_M: tl.constexpr):
    """This program's M block: (expert, its rows' pair indices [BLOCK_M], which rows are real [BLOCK_M])."""
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    rows = tl.arange(0, BLOCK_M)
    real = rows < tl.load(block_rows_ptr + block)
    pairs = tl.load(pairs_ptr + block * BLOCK_M + rows, mask=real, other=0)
    return expert, pairs, real


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, out_ptr, pairs_ptr, block_expert_ptr, block_rows_ptr, hidden, inter, top_k,
                    stride_x, stride_we, stride_wn, stride_o,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROUND: tl.constexpr,
                    IEEE: tl.constexpr):
    expert, pairs, real = _block_rows(pairs_ptr, block_expert_ptr, block_rows_ptr, BLOCK_M)
    if expert < 0:
        return
    tokens = (pairs // top_k).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inter
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tokens[:, None] * stride_x + ks[None, :]
    gate_ptrs = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :].to(tl.int64) * stride_wn + ks[:, None]
    up_ptrs = gate_ptrs + inter * stride_wn
    gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k_ok = ks + k0 < hidden
        a = tl.load(a_ptrs + k0, mask=real[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        gate += mma(a, tl.load(gate_ptrs + k0, mask=w_mask, other=0.0), IEEE)
        up += mma(a, tl.load(up_ptrs + k0, mask=w_mask, other=0.0), IEEE)
    gate, up = round_to(gate, ROUND), round_to(up, ROUND)
    act = round_to(gate / (1.0 + tl.exp(-gate)), ROUND)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_o + cols[None, :],
             round_to(act * up, ROUND).to(out_ptr.dtype.element_ty), mask=real[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(h_ptr, w_ptr, weights_ptr, out_ptr, pairs_ptr, block_expert_ptr, block_rows_ptr, hidden, inter,
                 stride_h, stride_we, stride_wn, stride_o,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROUND: tl.constexpr,
                 IEEE: tl.constexpr):
    expert, pairs, real = _block_rows(pairs_ptr, block_expert_ptr, block_rows_ptr, BLOCK_M)
    if expert < 0:
        return
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :]
    w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :].to(tl.int64) * stride_wn + ks[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k_ok = ks + k0 < inter
        a = tl.load(a_ptrs + k0, mask=real[:, None] & k_ok[None, :], other=0.0)
        acc += mma(a, tl.load(w_ptrs + k0, mask=k_ok[:, None] & col_ok[None, :], other=0.0), IEEE)
    weight = tl.load(weights_ptr + pairs, mask=real, other=0.0).to(tl.float32)
    y = round_to(round_to(acc, ROUND) * weight[:, None], ROUND)
    tl.store(out_ptr + pairs[:, None].to(tl.int64) * stride_o + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=real[:, None] & col_ok[None, :])


@triton.jit
def _sum_slots_kernel(per_pair_ptr, ids_ptr, out_ptr, hidden, stride_p, stride_o,
                      TOP_K: tl.constexpr, K_POW2: tl.constexpr, BLOCK: tl.constexpr, ROUND: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < hidden
    slots = tl.arange(0, K_POW2)
    ids = tl.load(ids_ptr + token * TOP_K + slots, mask=slots < TOP_K, other=2**30).to(tl.int32)
    other = tl.arange(0, K_POW2)[None, :]
    before = (ids[None, :] < ids[:, None]) | ((ids[None, :] == ids[:, None]) & (other < slots[:, None]))
    rank = tl.sum(before.to(tl.int32), axis=1)  # the slot's place in ascending expert order (stable)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(TOP_K):
        slot = tl.sum(tl.where(rank == i, slots, 0))
        v = tl.load(per_pair_ptr + (token * TOP_K + slot) * stride_p + cols, mask=col_ok, other=0.0).to(tl.float32)
        if i == 0:
            acc = v
        else:
            acc = round_to(acc + v, ROUND)
    tl.store(out_ptr + token * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


def align(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [T, top_k] -> (pairs [num_blocks x block_m] int32: pair index t x top_k + k at each padded row
    (padding rows unset), block_expert [num_blocks] int32 (-1: an unused block), block_rows [num_blocks]
    int32: the real rows of each used block), num_blocks = `max_blocks`."""
    num_pairs = ids.numel()
    num_blocks = max_blocks(num_pairs, num_experts, block_m)
    pairs = torch.empty(num_blocks * block_m, dtype=torch.int32, device=ids.device)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=ids.device)
    block_rows = torch.empty(num_blocks, dtype=torch.int32, device=ids.device)
    _align_kernel[(num_experts,)](ids.contiguous().view(-1), pairs, block_expert, block_rows, num_pairs, num_blocks,
                                  BLOCK_M=block_m, CHUNK=ALIGN_CHUNK, E_POW2=next_pow2(num_experts), num_warps=4)
    return pairs, block_expert, block_rows


def fused_experts(w_gate_up: torch.Tensor, w_down: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor, config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """`moe.dispatch_loop`'s sum with the kernels above: stacked weights w_gate_up [E, 2I, hidden] and w_down
    [E, hidden, I], x [T, hidden], weights/ids [T, top_k] -> [T, hidden] in x's dtype. `config`: one of
    `FUSED_MOE_CONFIGS` (default `pick_config`)."""
    num_tokens, top_k = ids.shape
    num_experts, hidden, inter = w_down.shape
    out = torch.empty_like(x)
    if num_tokens == 0:
        return out
    block_m, block_n, block_k, num_warps, num_stages = config or pick_config(num_tokens, top_k, num_experts)
    pairs, block_expert, block_rows = align(ids, num_experts, block_m)
    num_blocks = block_expert.shape[0]
    x, w_gate_up, w_down = x.contiguous(), w_gate_up.contiguous(), w_down.contiguous()
    meta = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "ROUND": round_code(x.dtype),
            "IEEE": x.dtype == torch.float32, "num_warps": num_warps, "num_stages": num_stages}
    act = torch.empty(num_blocks * block_m, inter, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, block_n))](
        x, w_gate_up, act, pairs, block_expert, block_rows, hidden, inter, top_k,
        x.stride(0), w_gate_up.stride(0), w_gate_up.stride(1), act.stride(0), **meta)
    per_pair = torch.empty(num_tokens * top_k, hidden, dtype=x.dtype, device=x.device)
    _down_kernel[(num_blocks, triton.cdiv(hidden, block_n))](
        act, w_down, weights.contiguous().view(-1), per_pair, pairs, block_expert, block_rows, hidden, inter,
        act.stride(0), w_down.stride(0), w_down.stride(1), per_pair.stride(0), **meta)
    block = min(1024, next_pow2(hidden))
    _sum_slots_kernel[(num_tokens, triton.cdiv(hidden, block))](
        per_pair, ids.contiguous().view(-1), out, hidden, per_pair.stride(0), out.stride(0),
        TOP_K=top_k, K_POW2=next_pow2(top_k), BLOCK=block, ROUND=round_code(x.dtype), num_warps=4)
    return out
