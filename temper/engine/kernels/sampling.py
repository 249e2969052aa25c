"""The sampler's unfiltered path in Triton: log-softmax and the Gumbel-max draw without [B, V] temporaries.

Same function as `Sampler` without top-k / top-p / min-p (see `sampler.py`): x = logits / T (T = 1 for
greedy rows), log-probs (x - max) - log(sum exp(x - max)), token = argmax(log p + g) with the counter
hash noise g(keys, token id) computed in registers, greedy rows take argmax(logits) (first index on
ties). The reference materialises float32 logits, their log-softmax, and int64 hash and float noise
tensors of [B, V] each; at B = 256 and V = 151936 that is about 2 GB of memory traffic per step. Here
three launches read the logits twice:

1. per (row, chunk): max and sum of exp of x, and the greedy max and its index;
2. per (row, chunk): the row's log-sum-exp from the chunk statistics, then the best log p + g;
3. per row: the best chunk, the token and its log-prob.

Chunks are reduced in order with first-index ties, so the result does not depend on the chunking.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 4096


@triton.jit
def _mix32(x):
    x = ((x >> 16) ^ x) * 0x45D9F3B
    x = ((x >> 16) ^ x) * 0x45D9F3B
    return (x >> 16) ^ x


@triton.jit
def _row_chunk(logits_ptr, temp_ptr, stride_l, vocab, CHUNK_SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    mask = cols < vocab
    raw = tl.load(logits_ptr + row * stride_l + cols, mask=mask, other=float("-inf")).to(tl.float32)
    temp = tl.load(temp_ptr + row)
    x = raw / tl.where(temp == 0.0, 1.0, temp)
    return row, cols, mask, raw, x, temp


@triton.jit
def _stats_kernel(logits_ptr, temp_ptr, max_ptr, sum_ptr, gmax_ptr, gidx_ptr, stride_l, vocab, num_chunks,
                  CHUNK_SIZE: tl.constexpr):
    row, cols, mask, raw, x, _ = _row_chunk(logits_ptr, temp_ptr, stride_l, vocab, CHUNK_SIZE)
    m = tl.max(x, 0)
    s = tl.sum(tl.where(mask, tl.exp(x - m), 0.0), 0)
    gmax = tl.max(raw, 0)
    gidx = tl.min(tl.where(raw == gmax, cols, 2147483647), 0)  # first index of the max
    out = row * num_chunks + tl.program_id(1)
    tl.store(max_ptr + out, m)
    tl.store(sum_ptr + out, s)
    tl.store(gmax_ptr + out, gmax)
    tl.store(gidx_ptr + out, gidx)


@triton.jit
def _row_lse(max_ptr, sum_ptr, row, num_chunks, NCP: tl.constexpr):
    """(max, log of the sum of exp(x - max)) of a row, from its chunk statistics."""
    c = tl.arange(0, NCP)
    cmask = c < num_chunks
    m = tl.load(max_ptr + row * num_chunks + c, mask=cmask, other=float("-inf"))
    s = tl.load(sum_ptr + row * num_chunks + c, mask=cmask, other=0.0)
    top = tl.max(m, 0)
    return top, tl.log(tl.sum(tl.where(cmask, s * tl.exp(m - top), 0.0), 0))


@triton.jit
def _race_kernel(logits_ptr, temp_ptr, keys_ptr, max_ptr, sum_ptr, best_ptr, bidx_ptr, stride_l, vocab,
                 num_chunks, CHUNK_SIZE: tl.constexpr, NCP: tl.constexpr):
    row, cols, mask, _, x, _ = _row_chunk(logits_ptr, temp_ptr, stride_l, vocab, CHUNK_SIZE)
    top, log_sum = _row_lse(max_ptr, sum_ptr, row, num_chunks, NCP)
    k0 = tl.load(keys_ptr + 2 * row).to(tl.uint32)
    k1 = tl.load(keys_ptr + 2 * row + 1).to(tl.uint32)
    h = _mix32(_mix32(cols.to(tl.uint32) ^ k0) ^ k1)
    uniform = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    score = ((x - top) - log_sum) + -tl.log(-tl.log(uniform))
    score = tl.where(mask, score, float("-inf"))
    best = tl.max(score, 0)
    out = row * num_chunks + tl.program_id(1)
    tl.store(best_ptr + out, best)
    tl.store(bidx_ptr + out, tl.min(tl.where(score == best, cols, 2147483647), 0))


@triton.jit
def _pick_kernel(logits_ptr, temp_ptr, max_ptr, sum_ptr, gmax_ptr, gidx_ptr, best_ptr, bidx_ptr, token_ptr,
                 logprob_ptr, stride_l, num_chunks, ALL_GREEDY: tl.constexpr, NCP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, NCP)
    cmask = c < num_chunks
    temp = tl.load(temp_ptr + row)
    top, log_sum = _row_lse(max_ptr, sum_ptr, row, num_chunks, NCP)
    gmax = tl.load(gmax_ptr + row * num_chunks + c, mask=cmask, other=float("-inf"))
    gidx = tl.load(gidx_ptr + row * num_chunks + c, mask=cmask, other=2147483647)
    token = tl.min(tl.where(gmax == tl.max(gmax, 0), gidx, 2147483647), 0)
    if not ALL_GREEDY:
        best = tl.load(best_ptr + row * num_chunks + c, mask=cmask, other=float("-inf"))
        bidx = tl.load(bidx_ptr + row * num_chunks + c, mask=cmask, other=2147483647)
        sampled = tl.min(tl.where(best == tl.max(best, 0), bidx, 2147483647), 0)
        token = tl.where(temp == 0.0, token, sampled)
    x = tl.load(logits_ptr + row * stride_l + token).to(tl.float32) / tl.where(temp == 0.0, 1.0, temp)
    tl.store(token_ptr + row, token.to(tl.int64))
    tl.store(logprob_ptr + row, (x - top) - log_sum)


def sample(logits: torch.Tensor, temperatures: torch.Tensor, keys: torch.Tensor, all_greedy: bool,
           chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] (any float dtype, rows may be strided), temperatures [B] float32 (0: greedy),
    keys [B, 2] int64 -> (token ids [B] int64, log-probs [B] float32). `chunk`: vocabulary entries per
    program (a power of two)."""
    rows, vocab = logits.shape
    device = logits.device
    tokens = torch.empty(rows, dtype=torch.int64, device=device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=device)
    if not rows:
        return tokens, logprobs
    chunks = triton.cdiv(vocab, chunk)
    ncp = triton.next_power_of_2(chunks)
    stats = torch.empty((4, rows, chunks), dtype=torch.float32, device=device)
    idx = torch.empty((2, rows, chunks), dtype=torch.int32, device=device)
    temperatures = temperatures.contiguous()
    keys = keys.contiguous()
    _stats_kernel[(rows, chunks)](logits, temperatures, stats[0], stats[1], stats[2], idx[0], logits.stride(0), vocab,
                                  chunks, CHUNK_SIZE=chunk, num_warps=8)
    if not all_greedy:
        _race_kernel[(rows, chunks)](logits, temperatures, keys, stats[0], stats[1], stats[3], idx[1],
                                     logits.stride(0), vocab, chunks, CHUNK_SIZE=chunk, NCP=ncp, num_warps=8)
    _pick_kernel[(rows,)](logits, temperatures, stats[0], stats[1], stats[2], idx[0], stats[3], idx[1], tokens,
                          logprobs, logits.stride(0), chunks, ALL_GREEDY=all_greedy, NCP=ncp, num_warps=1)
    return tokens, logprobs
