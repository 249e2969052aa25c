"""Paged attention in Triton: KV-cache write, split-K decode, varlen causal prefill.

All three address a cache of logical shape ``[num_blocks, block_size, Hkv, D]`` (token slot s is block
s // block_size, row s % block_size) through its strides: token-major memory (contiguous, the layout
`attention.py` uses and the engine allocates) or head-major (a block holds each head's tokens
contiguously: tested, measured no faster on an H100, see benchmarks/RESULTS.md). They read
K/V straight from the blocks through the block table: no gathers into padded copies, no per-sequence
launches. Integer arguments that change from step to step (block-table width, split count) are not
specialised on, and the pointer arguments the engine passes are 16-byte aligned, so a new batch shape
never triggers a compile in the middle of serving.

- `store_kv`: one program per new token writes its K and V rows to the token's slot (slot < 0 skips:
  padding rows of a CUDA-graph batch).
- decode: one program per (kv head, sequence, split). The kv head's G = Hq / Hkv query heads form the
  rows of one matrix product (padded to 16), so each K/V tile is read once for all of them. Each
  sequence's context is cut into `num_splits` equal parts (flash-decoding) so that a small batch still
  fills the GPU; a second kernel merges the parts by their log-sum-exp. With one split the first
  kernel writes the output itself. The grid depends only on the batch size, so it can be captured in
  a CUDA graph; rows with context length 0 (padding) write zeros.
- prefill: one program per (q head, tile of BLOCK_M queries of one sequence), over the packed batch;
  keys come from the cache, where `store_kv` has just written the new tokens (so a sequence may read
  K/V that another sequence of the same batch wrote: the block manager's prefix sharing relies on
  it), with the causal diagonal offset by the sequence's cached prefix.

Softmax statistics and accumulators are float32; P is cast to the cache dtype for the P @ V product,
as flash attention does.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import triton
import triton.language as tl

from temper.engine.kernels.common import cuda_graph_of, median_cuda_ms, mma, next_pow2

logger = logging.getLogger(__name__)

LOG2E = 1.4426950408889634
MAX_DECODE_SPLITS = 16
# Decode tiles (BLOCK_N, num_warps, num_stages) that `tune_decode` times; the first is the default. On an
# H100 at B = 256 they all read K/V at 2.83-2.975 TB/s, the two-warp ones fastest (RESULTS, session 10).
DECODE_CONFIGS = ((64, 4, 2), (128, 8, 2), (64, 8, 3), (32, 4, 3), (32, 2, 2), (64, 2, 3))


@triton.jit
def slot_offsets(slot, h, d, PAGE: tl.constexpr, BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr,
                 HEAD_STRIDE: tl.constexpr):
    """Element offsets [heads, dims] of heads h, dims d of cache slot `slot` (int64)."""
    return (slot // PAGE) * BLOCK_STRIDE + (slot % PAGE) * TOKEN_STRIDE + h[:, None] * HEAD_STRIDE + d[None, :]


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, stride_kt, stride_kh, stride_vt, stride_vh,
                     H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                     BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, HP)
        d = tl.arange(0, D)
        mask = (h < H)[:, None]
        dst = slot_offsets(slot, h, d, PAGE, BLOCK_STRIDE, TOKEN_STRIDE, HEAD_STRIDE)
        k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
        tl.store(kc_ptr + dst, k, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
        tl.store(vc_ptr + dst, v, mask=mask)


def cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> dict[str, int]:
    """Element strides of block, token and head of a cache viewed as [num_blocks, block_size, Hkv, D] (the
    kernels' BLOCK_/TOKEN_/HEAD_STRIDE); K and V must share them, and D must be contiguous."""
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError(f"K and V caches need equal strides and a contiguous head dim; got {k_cache.stride()} "
                         f"and {v_cache.stride()}")
    return {"BLOCK_STRIDE": k_cache.stride(0), "TOKEN_STRIDE": k_cache.stride(1), "HEAD_STRIDE": k_cache.stride(2)}


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k/v [T, Hkv, D] (rows may be strided; the last dim contiguous) into their cache slots [T]."""
    tokens, heads, dim = k.shape
    if tokens:
        _store_kv_kernel[(tokens,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0),
                                    v.stride(1), H=heads, HP=next_pow2(heads), D=dim, PAGE=k_cache.shape[1],
                                    **cache_strides(k_cache, v_cache), num_warps=4)


@triton.jit
def _attend_keys(q, kc_ptr, vc_ptr, table_ptr, kvh, n, nmask, smask, d, m, l, acc, qk_scale, PAGE: tl.constexpr,
                 BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr,
                 IEEE: tl.constexpr):
    """One online-softmax step of rows q over keys n (cache positions of the sequence whose block-table
    row starts at `table_ptr`; nmask: which exist, smask: [rows, keys] which each row may see) of kv
    head `kvh`: returns the updated running max m, sum l and unnormalised output acc (float32)."""
    page = tl.load(table_ptr + n // PAGE, mask=nmask, other=0).to(tl.int64)
    rows = page * BLOCK_STRIDE + (n % PAGE) * TOKEN_STRIDE + kvh * HEAD_STRIDE
    k = tl.load(kc_ptr + rows[:, None] + d[None, :], mask=nmask[:, None], other=0.0)
    s = mma(q, tl.trans(k), IEEE) * qk_scale
    s = tl.where(smask, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    v = tl.load(vc_ptr + rows[:, None] + d[None, :], mask=nmask[:, None], other=0.0)
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, IEEE)
    return m_new, l, acc


@triton.jit(do_not_specialize=["stride_bt", "num_splits"])
def _decode_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, ctx_ptr, out_ptr, part_o_ptr, part_lse_ptr,
                   stride_qb, stride_qh, stride_ob, stride_oh, stride_bt, num_splits, qk_scale,
                   HQ: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                   BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr,
                   BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, IEEE: tl.constexpr):
    kvh = tl.program_id(0)  # fastest: the kv heads of one sequence run side by side (same token rows)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    split_len = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, ctx)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    heads = kvh * G + g
    gmask = g < G
    if start < end:
        q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=gmask[:, None], other=0.0)
        m = tl.full([GP], float("-inf"), tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < end
            m, l, acc = _attend_keys(q, kc_ptr, vc_ptr, bt_ptr + b * stride_bt, kvh, n, nmask, nmask[None, :], d,
                                     m, l, acc, qk_scale, PAGE, BLOCK_STRIDE, TOKEN_STRIDE, HEAD_STRIDE, IEEE)
        out = acc / l[:, None]
        if DIRECT:
            tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=gmask[:, None])
        else:
            part = (b * HQ + heads) * num_splits + split
            tl.store(part_o_ptr + part[:, None] * D + d[None, :], out, mask=gmask[:, None])
            tl.store(part_lse_ptr + part, m + tl.log2(l), mask=gmask)
    elif DIRECT:  # empty context (a padding row): zeros, never garbage
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 tl.zeros([GP, D], tl.float32).to(out_ptr.dtype.element_ty), mask=gmask[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(part_o_ptr, part_lse_ptr, ctx_ptr, out_ptr, stride_ob, stride_oh, num_splits,
                         HQ: tl.constexpr, D: tl.constexpr, SP: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    split_len = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    used = tl.cdiv(ctx, tl.maximum(split_len, 1))
    sp = tl.arange(0, SP)
    smask = sp < used
    d = tl.arange(0, D)
    part = (b * HQ + h) * num_splits + sp
    lse = tl.load(part_lse_ptr + part, mask=smask, other=float("-inf"))
    top = tl.maximum(tl.max(lse, 0), -1e30)  # finite even when no split was used
    w = tl.where(smask, tl.exp2(lse - top), 0.0)
    o = tl.load(part_o_ptr + part[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
    out = tl.sum(w[:, None] * o, 0) / tl.maximum(tl.sum(w, 0), 1e-30)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def decode_num_splits(batch_size: int, num_kv_heads: int, num_sms: int) -> int:
    """Splits per sequence so that batch x kv heads x splits programs fill about four waves of SMs."""
    return max(1, min(MAX_DECODE_SPLITS, -(-4 * num_sms // max(1, batch_size * num_kv_heads))))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, num_splits: int, block_n: int = 64,
                     num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """One query per sequence: q [B, Hq, D] (rows may be strided) over its first context_lens[b] cached
    tokens -> [B, Hq, D]."""
    batch, num_heads, dim = q.shape
    num_kv_heads, page = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty((batch, num_heads, dim), dtype=q.dtype, device=q.device)
    if not batch:
        return out
    direct = num_splits == 1
    parts = 1 if direct else batch * num_heads * num_splits
    part_o = torch.empty((parts, dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((parts,), dtype=torch.float32, device=q.device)
    _decode_kernel[(num_kv_heads, batch, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_o, part_lse, q.stride(0), q.stride(1),
        out.stride(0), out.stride(1), block_tables.stride(0), num_splits, scale * LOG2E,
        HQ=num_heads, G=group, GP=max(16, next_pow2(group)), D=dim, PAGE=page, **cache_strides(k_cache, v_cache),
        BLOCK_N=block_n, DIRECT=direct, IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    if not direct:
        _decode_merge_kernel[(batch, num_heads)](
            part_o, part_lse, context_lens, out, out.stride(0), out.stride(1), num_splits,
            HQ=num_heads, D=dim, SP=next_pow2(num_splits), BLOCK_N=block_n, num_warps=4,
        )
    return out


@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, out_ptr, bt_ptr, tile_seq_ptr, tile_start_ptr, q_start_ptr,
                    q_len_ptr, cached_ptr, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, qk_scale,
                    G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                    BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    h = tl.program_id(0)  # fastest: the q heads of one kv head run side by side (shared K/V tiles)
    tile = tl.program_id(1)
    kvh = h // G
    seq = tl.load(tile_seq_ptr + tile).to(tl.int64)
    first = tl.load(tile_start_ptr + tile).to(tl.int32)  # the tile's first query, within its sequence
    q_start = tl.load(q_start_ptr + seq).to(tl.int64)
    q_len = tl.load(q_len_ptr + seq).to(tl.int32)
    cached = tl.load(cached_ptr + seq).to(tl.int32)
    i = first + tl.arange(0, BLOCK_M)
    imask = i < q_len
    d = tl.arange(0, D)
    q_rows = q_start + i
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + h * stride_qh + d[None, :], mask=imask[:, None], other=0.0)
    q_pos = cached + i  # absolute positions; query at p sees keys 0..p
    kv_end = cached + tl.minimum(first + BLOCK_M, q_len)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in range(0, kv_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < kv_end
        causal = (n[None, :] <= q_pos[:, None]) & nmask[None, :]
        m, l, acc = _attend_keys(q, kc_ptr, vc_ptr, bt_ptr + seq * stride_bt, kvh, n, nmask, causal, d, m, l, acc,
                                 qk_scale, PAGE, BLOCK_STRIDE, TOKEN_STRIDE, HEAD_STRIDE, IEEE)
    out = acc / l[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + h * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=imask[:, None])


def tune_decode(num_heads: int, num_kv_heads: int, head_dim: int, page: int, dtype: torch.dtype,
                device: torch.device, batch: int, context: int, repeats: int = 7) -> tuple[int, int, int]:
    """The fastest of `DECODE_CONFIGS` for a full batch of sequences of up to `context` tokens (lengths
    spread over [context / 4, context], longest first, as the scheduler orders a decode batch) on this
    device: decode attention is most of a decode step, and the best tile differs between GPUs. Each
    tile is timed as the engine runs it, 8 calls replayed from a CUDA graph (a call timed alone also
    times its launch, which made the pick vary between engine starts). A tile that fails to compile or
    disagrees with the default one (which the self-check compared with the reference) is skipped."""
    lengths = torch.linspace(context, max(1, context // 4), batch).round().long()
    widths = (lengths + page - 1) // page
    shape = (int(widths.sum()), page, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, device=device, dtype=dtype)
    v_cache = torch.randn(shape, device=device, dtype=dtype)
    blocks = torch.randperm(shape[0])
    tables = torch.zeros(batch, int(widths.max()), dtype=torch.long)
    for row, (start, width) in enumerate(zip((torch.cumsum(widths, 0) - widths).tolist(), widths.tolist())):
        tables[row, :width] = blocks[start : start + width]
    tables = tables.to(device)
    q = torch.randn(batch, num_heads, head_dim, device=device, dtype=dtype)
    context_lens = lengths.to(device)
    splits = decode_num_splits(batch, num_kv_heads, torch.cuda.get_device_properties(device).multi_processor_count)
    timings, expected = {}, None
    for config in DECODE_CONFIGS:
        def call(config=config):
            return decode_attention(q, k_cache, v_cache, tables, context_lens, head_dim**-0.5, splits, *config)

        try:
            out = call().float()
        except Exception as e:  # noqa: BLE001 (compile errors come in many types)
            logger.warning("decode tile %s does not compile here (%s: %s)", config, type(e).__name__, e)
            continue
        if expected is None:
            expected = out
        elif not ((out - expected).norm() <= 1e-2 * expected.norm()):
            logger.warning("decode tile %s disagrees with the default tile; skipped", config)
            continue
        timings[config] = median_cuda_ms(cuda_graph_of(call, 8, device).replay, repeats)
    return min(timings, key=timings.get) if timings else DECODE_CONFIGS[0]


def compile_kernels(num_heads: int, num_kv_heads: int, head_dim: int, page: int, dtype: torch.dtype,
                    device: torch.device, decode_config: tuple[int, int, int]) -> None:
    """Compile every variant the engine launches (KV write, prefill, decode with one split and with
    several, and their merge) on scratch tensors shaped like the model's, so that no request waits
    for a compile. q/k/v are views of one fused qkv buffer, as the model passes them (Triton
    specialises on the divisibility of their strides)."""
    tokens, blocks = 2 * page + 3, 4
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=device, dtype=dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k, v = (x.view(tokens, -1, head_dim) for x in (q, k, v))
    k_cache = torch.zeros((blocks, page, num_kv_heads, head_dim), device=device, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    store_kv(k, v, k_cache, v_cache, torch.arange(tokens, device=device))
    tables = torch.arange(blocks, device=device).view(1, blocks)
    tiles, seq_info = prefill_arguments([tokens], [0], prefill_block_m(head_dim), device)
    prefill_attention(q, k_cache, v_cache, tables, tiles, seq_info, head_dim**-0.5)
    for splits in (1, 2, 4, 8, MAX_DECODE_SPLITS):  # one merge variant per power of two
        decode_attention(q[:1], k_cache, v_cache, tables, torch.tensor([tokens], device=device), head_dim**-0.5,
                         splits, *decode_config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill_block_m(head_dim: int) -> int:
    return 64 if head_dim <= 128 else 32


def prefill_tiles(query_lens: list[int], cached_lens: list[int], block_m: int) -> tuple[np.ndarray, np.ndarray]:
    """(sequence index, first query index) of every BLOCK_M tile of the packed queries, the tiles with
    the most keys first, so that the slowest programs start first."""
    lens = np.asarray(query_lens, dtype=np.int64)
    counts = -(-lens // block_m)
    seqs = np.repeat(np.arange(len(lens)), counts)
    firsts = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * block_m
    order = np.argsort(-(np.asarray(cached_lens, dtype=np.int64)[seqs] + firsts), kind="stable")
    return seqs[order], firsts[order]


def prefill_arguments(query_lens: list[int], cached_lens: list[int], block_m: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tiles of `block_m` queries, seq_info) of `prefill_attention` (and of `latent_attention`'s prefill)
    for a batch, in one host-to-device copy. Each row starts 16-byte aligned (rows padded to 4 int32s), as
    Triton assumes of pointer arguments when it compiles: a misaligned row would compile another variant
    in the middle of serving."""
    seqs, firsts = prefill_tiles(query_lens, cached_lens, block_m)
    starts = np.cumsum([0] + list(query_lens[:-1]))
    nt, b = -(-len(seqs) // 4) * 4, -(-len(query_lens) // 4) * 4
    host = np.zeros(2 * nt + 3 * b, dtype=np.int32)
    for i, row in enumerate((seqs, firsts)):
        host[i * nt : i * nt + len(row)] = row
    for i, row in enumerate((starts, query_lens, cached_lens)):
        host[2 * nt + i * b : 2 * nt + i * b + len(row)] = row
    dev = _to_device(host, device)
    return dev[: 2 * nt].view(2, nt)[:, : len(seqs)], dev[2 * nt :].view(3, b)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      tiles: torch.Tensor, seq_info: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of packed queries q [T, Hq, D] over their sequences' cached K/V -> [T, Hq, D].

    tiles: [2, NT] int (`prefill_tiles`); seq_info: [3, B] int rows (first packed query, query count,
    cached prefix length) per sequence.
    """
    tokens, num_heads, dim = q.shape
    num_kv_heads, page = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty((tokens, num_heads, dim), dtype=q.dtype, device=q.device)
    num_tiles = tiles.shape[1]
    if not num_tiles:
        return out
    _prefill_kernel[(num_heads, num_tiles)](
        q, k_cache, v_cache, out, block_tables, tiles[0], tiles[1], seq_info[0], seq_info[1], seq_info[2],
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0), scale * LOG2E,
        G=num_heads // num_kv_heads, D=dim, PAGE=page, **cache_strides(k_cache, v_cache),
        BLOCK_M=prefill_block_m(dim), BLOCK_N=32,  # the fastest of 36 tiles on an H100 (RESULTS, session 10)
        IEEE=q.dtype == torch.float32, num_warps=4, num_stages=3,
    )
    return out


class TritonPagedAttention:
    """Attention backend over the Triton kernels (same `prepare` / `forward` contract as
    `TorchPagedAttention`: write every new K/V first, then attend).

    prepare() derives, once per step: for decode, the split count (a Python int that depends only on
    the batch size, so a captured CUDA graph stays valid); for prefill, the query tiles and the
    per-sequence offsets, in one host-to-device copy.
    """

    def __init__(self, num_kv_heads: int, head_dim: int, num_sms: int, decode_config=DECODE_CONFIGS[0]):
        self.num_kv_heads, self.head_dim, self.num_sms = num_kv_heads, head_dim, num_sms
        self.decode_config = decode_config  # (BLOCK_N, num_warps, num_stages), see `tune_decode`

    @classmethod
    def for_device(cls, num_heads: int, num_kv_heads: int, head_dim: int, page: int, dtype: torch.dtype,
                   device: torch.device, max_batch: int, max_len: int) -> TritonPagedAttention:
        """The backend for an engine on `device`; on CUDA with the decode tile timed there and every
        kernel variant compiled."""
        if device.type != "cuda":
            return cls(num_kv_heads, head_dim, num_sms=4)
        config = tune_decode(num_heads, num_kv_heads, head_dim, page, dtype, device, min(256, max_batch),
                             min(1024, max_len))
        logger.info("decode attention tile (BLOCK_N, warps, stages): %s", config)
        compile_kernels(num_heads, num_kv_heads, head_dim, page, dtype, device, config)
        return cls(num_kv_heads, head_dim, torch.cuda.get_device_properties(device).multi_processor_count, config)

    @staticmethod
    def workspace_bytes(num_heads: int, head_dim: int, max_num_seqs: int) -> int:
        """Decode's float32 partial outputs and log-sum-exps at the largest batch."""
        return max_num_seqs * num_heads * MAX_DECODE_SPLITS * (head_dim + 1) * 4

    def prepare(self, meta) -> None:
        if meta.is_prefill:
            meta.backend_data["tiles"], meta.backend_data["seq_info"] = prefill_arguments(
                meta.query_lens, meta.cached_lens, prefill_block_m(self.head_dim), meta.slot_mapping.device)
        else:
            meta.backend_data["num_splits"] = decode_num_splits(len(meta.query_lens), self.num_kv_heads, self.num_sms)

    def forward(self, q, k, v, k_cache, v_cache, meta, scale: float, kv_stored: bool = False) -> torch.Tensor:
        if not kv_stored:
            store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_prefill:
            return prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.backend_data["tiles"],
                                     meta.backend_data["seq_info"], scale)
        return decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale,
                                meta.backend_data["num_splits"], *self.decode_config)


def _to_device(host: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(host)
    if device.type == "cuda":  # pinned, so the copy is asynchronous; the allocator keeps it alive until done
        t = t.pin_memory().to(device, non_blocking=True)
    return t
