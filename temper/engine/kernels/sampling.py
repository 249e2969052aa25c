"""The sampler's unfiltered path in Triton: log-softmax and the Gumbel-max draw without [B, V] temporaries.

Same function as `Sampler` without top-k / top-p / min-p (see `sampler.py`): x = logits / T (T = 1 for
greedy rows), token = argmax(x + g) with the counter hash noise g(keys, token id) computed in registers
(greedy rows: argmax(x), first index on ties), and its log-prob (x - max) - log(sum exp(x - max)). The
draw needs no normaliser (log p + g differs from x + g by a constant per row), so the logits are read
once. The reference materialises float32 logits, their log-softmax, and int64 hash and float noise
tensors of [B, V] each; at B = 256 and V = 151936 that is about 2 GB of memory traffic per step. Here
two launches:

1. per (row, chunk of `CHUNK` entries, walked in tiles): max and sum of exp of x, and the best x + g (x
   for greedy rows) and its index;
2. per row: the log-sum-exp from the chunk statistics, the best chunk, the token and its log-prob.

Chunks are reduced in order with first-index ties, so the result does not depend on the chunking.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.libdevice import fast_logf

from temper.engine.kernels.common import INTERPRET

# Vocabulary entries per program and per loop iteration, and warps per program: the fastest of 30
# combinations at B = 16-256 on an H100 (benchmarks/RESULTS.md, session 10).
CHUNK, TILE, NUM_WARPS = 8192, 1024, 4
# A running maximum's start: finite, so exp(NO_MAX - NO_MAX) = 1 where -inf would give NaN.
NO_MAX = tl.constexpr(-3.0e38)


@triton.jit
def _mix32(x):
    x = ((x >> 16) ^ x) * 0x45D9F3B
    x = ((x >> 16) ^ x) * 0x45D9F3B
    return (x >> 16) ^ x


@triton.jit
def _log(x):
    """The noise's logs with lg2.approx (two instructions, not ~20: the kernel is bound by instruction
    issue, not by reading the logits); Triton's interpreter (the CPU tests) has no libdevice."""
    if INTERPRET:
        return tl.log(x)
    else:
        return fast_logf(x)


@triton.jit
def _chunk_kernel(logits_ptr, temp_ptr, keys_ptr, max_ptr, sum_ptr, best_ptr, bidx_ptr, stride_l, vocab, num_chunks,
                  CHUNK_SIZE: tl.constexpr, TILE_SIZE: tl.constexpr, ALL_GREEDY: tl.constexpr):
    """Each lane keeps its own running max, sum of exp (rescaled when its max grows), best score and
    that score's first index over the chunk's tiles; the lanes are reduced once at the end."""
    row = tl.program_id(0).to(tl.int64)
    first = tl.program_id(1) * CHUNK_SIZE
    end = tl.minimum(first + CHUNK_SIZE, vocab)
    temp = tl.load(temp_ptr + row)
    divisor = tl.where(temp == 0.0, 1.0, temp)
    k0 = tl.load(keys_ptr + 2 * row).to(tl.uint32)
    k1 = tl.load(keys_ptr + 2 * row + 1).to(tl.uint32)
    lanes = tl.arange(0, TILE_SIZE)
    m = tl.full([TILE_SIZE], NO_MAX, tl.float32)
    s = tl.zeros([TILE_SIZE], tl.float32)
    best = tl.full([TILE_SIZE], float("-inf"), tl.float32)
    bidx = first + lanes  # an all -inf chunk answers its first index
    for start in range(first, end, TILE_SIZE):
        cols = start + lanes
        mask = cols < end
        x = tl.load(logits_ptr + row * stride_l + cols, mask=mask, other=float("-inf")).to(tl.float32) / divisor
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
        score = x
        if not ALL_GREEDY:  # noqa: SIM102 (a compile-time branch around a run-time one)
            if temp != 0.0:
                h = _mix32(_mix32(cols.to(tl.uint32) ^ k0) ^ k1)
                uniform = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
                score = tl.where(mask, x + -_log(-_log(uniform)), float("-inf"))
        better = score > best  # strictly: a lane keeps the first of its tied columns
        best = tl.where(better, score, best)
        bidx = tl.where(better, cols, bidx)
    top = tl.max(m, 0)
    chunk_best = tl.max(best, 0)
    out = row * num_chunks + tl.program_id(1)
    tl.store(max_ptr + out, top)
    tl.store(sum_ptr + out, tl.sum(s * tl.exp(m - top), 0))
    tl.store(best_ptr + out, chunk_best)
    tl.store(bidx_ptr + out, tl.min(tl.where(best == chunk_best, bidx, 2147483647), 0))  # first index of the best


@triton.jit
def _pick_kernel(logits_ptr, temp_ptr, max_ptr, sum_ptr, best_ptr, bidx_ptr, token_ptr, logprob_ptr, stride_l,
                 num_chunks, NCP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, NCP)
    cmask = c < num_chunks
    m = tl.load(max_ptr + row * num_chunks + c, mask=cmask, other=float("-inf"))
    s = tl.load(sum_ptr + row * num_chunks + c, mask=cmask, other=0.0)
    top = tl.max(m, 0)
    log_sum = tl.log(tl.sum(tl.where(cmask, s * tl.exp(m - top), 0.0), 0))
    best = tl.load(best_ptr + row * num_chunks + c, mask=cmask, other=float("-inf"))
    bidx = tl.load(bidx_ptr + row * num_chunks + c, mask=cmask, other=2147483647)
    token = tl.min(tl.where(best == tl.max(best, 0), bidx, 2147483647), 0)
    temp = tl.load(temp_ptr + row)
    x = tl.load(logits_ptr + row * stride_l + token).to(tl.float32) / tl.where(temp == 0.0, 1.0, temp)
    tl.store(token_ptr + row, token.to(tl.int64))
    tl.store(logprob_ptr + row, (x - top) - log_sum)


def sample(logits: torch.Tensor, temperatures: torch.Tensor, keys: torch.Tensor, all_greedy: bool,
           chunk: int = CHUNK, tile: int = TILE, num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] (any float dtype, rows may be strided), temperatures [B] float32 (0: greedy),
    keys [B, 2] int64 -> (token ids [B] int64, log-probs [B] float32). `chunk`: vocabulary entries per
    program, `tile`: per loop iteration (powers of two)."""
    rows, vocab = logits.shape
    device = logits.device
    tokens = torch.empty(rows, dtype=torch.int64, device=device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=device)
    if not rows:
        return tokens, logprobs
    chunks = triton.cdiv(vocab, chunk)
    # Rows padded to a multiple of 4, so that each statistic starts 16-byte aligned whatever the batch:
    # Triton specialises pointers on that, and a misaligned one would compile a variant mid-serving.
    stats = torch.empty((3, -(-rows // 4) * 4, chunks), dtype=torch.float32, device=device)
    best_idx = torch.empty((rows, chunks), dtype=torch.int32, device=device)
    temperatures = temperatures.contiguous()
    keys = keys.contiguous()
    _chunk_kernel[(rows, chunks)](logits, temperatures, keys, stats[0], stats[1], stats[2], best_idx, logits.stride(0),
                                  vocab, chunks, CHUNK_SIZE=chunk, TILE_SIZE=min(tile, chunk), ALL_GREEDY=all_greedy,
                                  num_warps=num_warps)
    _pick_kernel[(rows,)](logits, temperatures, stats[0], stats[1], stats[2], best_idx, tokens, logprobs,
                          logits.stride(0), chunks, NCP=triton.next_power_of_2(chunks), num_warps=1)
    return tokens, logprobs
