"""Multi-head latent attention (DeepSeek-V3 / Moonlight, `models/deepseek_v3.py`) over the paged cache, in Triton.

The cache holds one single-head entry per token, ``[c, k_rope]`` (kv_lora_rank + qk_rope_head_dim values:
512 + 64 for DeepSeek-V3 and Moonlight), addressed like `paged_attention.py`'s caches through the
strides of its logical shape ``[num_blocks, block_size, 1, D]``. Every query head h attends to it with
``q_h = [W_UK^T q_nope, q_rope]`` (the absorbed form), and the value is the entry's first kv_lora_rank
columns: multi-query attention with key width D = DV + DR and value width DV, where the value is a
prefix of the key that is read once.

- `store_latent`: one program per new token writes its entry to its slot (slot < 0 skips: padding rows
  of a CUDA-graph batch).
- decode (flash-decoding, as `paged_attention`'s dense decode): one program per (block of BLOCK_H
  query heads, sequence, split). The head block is the M dimension of the matrix products, so one
  tile of BLOCK_N entries, loaded once, serves the scores of every head of the block (``q_c @ c^T +
  q_rope @ k_rope^T``, the key width split as DV + DR: 576 is no power of two) and their outputs
  (``p @ c``). The context is cut into `num_splits` equal parts so that a small batch still fills the
  GPU; `paged_attention`'s merge kernel combines the parts by their log-sum-exp (one split: the first
  kernel writes the output itself). The grid depends only on the batch size (the split count too:
  `latent_num_splits`), block tables and context lengths are read on the device, so the launch can be
  captured in a CUDA graph; rows with context length 0 (padding) write zeros.
- prefill (causal, varlen, after any cached prefix): one program per (block of BLOCK_H heads, tile of
  BLOCK_T queries of one sequence), over the packed batch. The tile's (token, head) pairs, flattened
  token-major into BLOCK_M = BLOCK_T x BLOCK_H rows, are the M dimension, so each tile of BLOCK_N
  entries serves every head of the block (the heads of a token share its causal limit, so the rows of
  many heads cost no more masking than one). The entries come from the cache through the block table,
  where `store_latent` has just written the step's own (so a sequence may read entries that another
  sequence of the same batch wrote: prefix sharing), with the causal diagonal offset by the sequence's
  cached prefix; the tiles are `paged_attention.prefill_tiles`' (the most keys first). The reference
  gathers each sequence's context and expands it to every head instead.

Both kernels step through the cache with `_attend_tile` (one tile of entries into the online softmax; the
prefill's with its causal mask), which Triton inlines. Softmax statistics and accumulators are float32; P is cast
to the cache dtype for the P @ c product.
DV must be a power of two >= 16 (DR is padded to one), which DeepSeek's 512 is.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from temper.engine.kernels.common import cuda_graph_of, median_cuda_ms, mma, next_pow2
from temper.engine.kernels.paged_attention import LOG2E, MAX_DECODE_SPLITS, _decode_merge_kernel, prefill_arguments

logger = logging.getLogger(__name__)

# Decode tiles (BLOCK_H, BLOCK_N, num_warps, num_stages) that `tune_latent_decode` times; the first is the
# default (SGLang's MLA decode tile). A stage holds BLOCK_N entries of 576 bf16 values (36 KB at 32): at
# most ~150 KB of shared memory in flight, within the 228 KB of a Hopper SM. BLOCK_H 32/64 serve models
# with that many heads per rank (DeepSeek-V3: 128) with fewer re-reads of each tile.
LATENT_DECODE_CONFIGS = ((16, 32, 4, 2), (16, 64, 4, 2), (16, 32, 4, 3), (16, 16, 4, 2), (16, 64, 8, 2),
                         (32, 32, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2))
# How many programs per SM the split count aims at (`latent_num_splits`), also timed: the dense decode's 4
# by default; fewer splits write fewer float32 partial outputs (512 per head and split, against 576 bf16
# values per entry read), more fill the GPU better at small batches.
SPLIT_WAVES = (4, 2, 1)
# Prefill tiles (BLOCK_M, BLOCK_N, num_warps, num_stages): BLOCK_M (token, head) rows x 512 float32
# accumulators, 64 registers a thread at 32 rows and 8 warps; a stage of 32 entries is 36 KB of bf16
# (q's 32 rows as much again). The first is the default: benchmarks/mla_prefill.py on an H100 (8 x 512 new
# tokens) timed it fastest of these at 16 and 128 heads (0.44 and 2.06 ms; the next, 0.53 and 2.73 ms).
LATENT_PREFILL_CONFIGS = ((64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2), (16, 32, 4, 2), (16, 64, 4, 2))


def latent_dims_supported(value_dim: int, rope_dim: int) -> str | None:
    """Why the kernels cannot serve a cache entry of value_dim + rope_dim values, or None if they can."""
    if value_dim < 16 or value_dim & (value_dim - 1):
        return f"kv_lora_rank={value_dim} is not a power of two >= 16"
    if rope_dim < 1:
        return f"qk_rope_head_dim={rope_dim} is not positive"
    return None


@triton.jit
def _store_latent_kernel(x_ptr, cache_ptr, slot_ptr, stride_xt, D: tl.constexpr, DP: tl.constexpr,
                         PAGE: tl.constexpr, BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        d = tl.arange(0, DP)
        mask = d < D
        x = tl.load(x_ptr + t * stride_xt + d, mask=mask)
        tl.store(cache_ptr + (slot // PAGE) * BLOCK_STRIDE + (slot % PAGE) * TOKEN_STRIDE + d, x, mask=mask)


def store_latent(entry: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """entry [T, 1, D] (rows may be strided; the last dim contiguous) into the cache slots [T] of `cache`
    [num_blocks, block_size, 1, D]."""
    tokens, _, dim = entry.shape
    if tokens:
        _store_latent_kernel[(tokens,)](entry, cache, slot_mapping, entry.stride(0), D=dim, DP=next_pow2(dim),
                                        PAGE=cache.shape[1], BLOCK_STRIDE=cache.stride(0),
                                        TOKEN_STRIDE=cache.stride(1), num_warps=4)


@triton.jit
def _attend_tile(q_c, q_r, q_pos, m, l, acc, cache_ptr, table, n0, end, qk_scale, dv, dr, rmask, DV: tl.constexpr,
                 PAGE: tl.constexpr, BLOCK_STRIDE: tl.constexpr, TOKEN_STRIDE: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """The inner step of both kernels: the BLOCK_N entries from n0 (those before `end`), read once through the
    block table `table`, into the online softmax (m, l, acc) of the query rows [q_c, q_r]; CAUSAL: row r sees
    entries up to position q_pos[r]. Returns the new (m, l, acc)."""
    n = n0 + tl.arange(0, BLOCK_N)
    nmask = n < end
    page = tl.load(table + n // PAGE, mask=nmask, other=0).to(tl.int64)
    rows = cache_ptr + page * BLOCK_STRIDE + (n % PAGE) * TOKEN_STRIDE
    c = tl.load(rows[:, None] + dv[None, :], mask=nmask[:, None], other=0.0)
    k_r = tl.load(rows[:, None] + DV + dr[None, :], mask=nmask[:, None] & rmask[None, :], other=0.0)
    s = (mma(q_c, tl.trans(c), IEEE) + mma(q_r, tl.trans(k_r), IEEE)) * qk_scale
    if CAUSAL:
        s = tl.where((n[None, :] <= q_pos[:, None]) & nmask[None, :], s, float("-inf"))
    else:
        s = tl.where(nmask[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + mma(p.to(c.dtype), c, IEEE)
    return m_new, l, acc


@triton.jit(do_not_specialize=["stride_bt", "num_splits"])
def _latent_decode_kernel(q_ptr, cache_ptr, bt_ptr, ctx_ptr, out_ptr, part_o_ptr, part_lse_ptr,
                          stride_qb, stride_qh, stride_ob, stride_oh, stride_bt, num_splits, qk_scale,
                          H: tl.constexpr, BLOCK_H: tl.constexpr, DV: tl.constexpr, DR: tl.constexpr,
                          DRP: tl.constexpr, PAGE: tl.constexpr, BLOCK_STRIDE: tl.constexpr,
                          TOKEN_STRIDE: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
                          IEEE: tl.constexpr):
    hb = tl.program_id(0)  # fastest: the head blocks of one sequence run side by side (same cache tiles)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    split_len = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, ctx)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = heads < H
    dv = tl.arange(0, DV)
    dr = tl.arange(0, DRP)
    rmask = dr < DR
    if start < end:
        q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh
        q_c = tl.load(q_rows + dv[None, :], mask=hmask[:, None], other=0.0)
        q_r = tl.load(q_rows + DV + dr[None, :], mask=hmask[:, None] & rmask[None, :], other=0.0)
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, DV], tl.float32)
        table = bt_ptr + b * stride_bt
        for n0 in range(start, end, BLOCK_N):
            m, l, acc = _attend_tile(q_c, q_r, 0, m, l, acc, cache_ptr, table, n0, end, qk_scale, dv, dr, rmask,
                                     DV, PAGE, BLOCK_STRIDE, TOKEN_STRIDE, BLOCK_N, False, IEEE)
        out = acc / l[:, None]
        if DIRECT:
            tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + dv[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=hmask[:, None])
        else:
            part = (b * H + heads) * num_splits + split  # the layout `_decode_merge_kernel` reads
            tl.store(part_o_ptr + part[:, None] * DV + dv[None, :], out, mask=hmask[:, None])
            tl.store(part_lse_ptr + part, m + tl.log2(l), mask=hmask)
    elif DIRECT:  # empty context (a padding row): zeros, never garbage
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + dv[None, :],
                 tl.zeros([BLOCK_H, DV], tl.float32).to(out_ptr.dtype.element_ty), mask=hmask[:, None])


@triton.jit(do_not_specialize=["stride_bt"])
def _latent_prefill_kernel(q_ptr, cache_ptr, out_ptr, bt_ptr, tile_seq_ptr, tile_start_ptr, q_start_ptr, q_len_ptr,
                           cached_ptr, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, qk_scale,
                           H: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, DV: tl.constexpr,
                           DR: tl.constexpr, DRP: tl.constexpr, PAGE: tl.constexpr, BLOCK_STRIDE: tl.constexpr,
                           TOKEN_STRIDE: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    hb = tl.program_id(0)  # fastest: the head blocks of one query tile run side by side (same cache tiles)
    tile = tl.program_id(1)
    seq = tl.load(tile_seq_ptr + tile).to(tl.int64)
    first = tl.load(tile_start_ptr + tile).to(tl.int32)  # the tile's first query, within its sequence
    q_start = tl.load(q_start_ptr + seq).to(tl.int64)
    q_len = tl.load(q_len_ptr + seq).to(tl.int32)
    cached = tl.load(cached_ptr + seq).to(tl.int32)
    r = tl.arange(0, BLOCK_T * BLOCK_H)  # row r: query first + r // BLOCK_H, head r % BLOCK_H of the block
    i = first + r // BLOCK_H
    heads = hb * BLOCK_H + r % BLOCK_H
    row_mask = (i < q_len) & (heads < H)
    dv = tl.arange(0, DV)
    dr = tl.arange(0, DRP)
    rmask = dr < DR
    q_rows = q_ptr + (q_start + i)[:, None] * stride_qt + heads[:, None] * stride_qh
    q_c = tl.load(q_rows + dv[None, :], mask=row_mask[:, None], other=0.0)
    q_r = tl.load(q_rows + DV + dr[None, :], mask=row_mask[:, None] & rmask[None, :], other=0.0)
    q_pos = cached + i  # absolute positions; the query at p sees entries 0..p (every row sees entry 0: no NaN)
    kv_end = cached + tl.minimum(first + BLOCK_T, q_len)  # never past the tile's last query
    m = tl.full([BLOCK_T * BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_T * BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_T * BLOCK_H, DV], tl.float32)
    table = bt_ptr + seq * stride_bt
    for n0 in range(0, kv_end, BLOCK_N):
        m, l, acc = _attend_tile(q_c, q_r, q_pos, m, l, acc, cache_ptr, table, n0, kv_end, qk_scale, dv, dr, rmask,
                                 DV, PAGE, BLOCK_STRIDE, TOKEN_STRIDE, BLOCK_N, True, IEEE)
    out = acc / l[:, None]
    tl.store(out_ptr + (q_start + i)[:, None] * stride_ot + heads[:, None] * stride_oh + dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


def prefill_head_block(num_heads: int, block_m: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_T) of a prefill tile of block_m rows: as many heads as there are (up to block_m, as a
    power of two), the rest of the rows tokens."""
    block_h = min(block_m, next_pow2(num_heads))
    return block_h, block_m // block_h


def latent_prefill_arguments(query_lens: list[int], cached_lens: list[int], num_heads: int, block_m: int,
                             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tiles, seq_info) of `latent_prefill` for a batch (`paged_attention.prefill_arguments` with the tile's
    BLOCK_T queries)."""
    return prefill_arguments(query_lens, cached_lens, prefill_head_block(num_heads, block_m)[1], device)


def latent_prefill(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, tiles: torch.Tensor,
                   seq_info: torch.Tensor, scale: float, value_dim: int, block_m: int = 32, block_n: int = 32,
                   num_warps: int = 8, num_stages: int = 2) -> torch.Tensor:
    """Causal attention of packed queries q [T, H, D] (rows may be strided) over their sequences' cache
    entries (`cache` [num_blocks, block_size, 1, D], the new ones already written) -> [T, H, value_dim].

    tiles: [2, NT] int (`latent_prefill_arguments` with the same `block_m` and head count); seq_info:
    [3, B] int rows (first packed query, query count, cached prefix length) per sequence.
    """
    tokens, num_heads, dim = q.shape
    out = torch.empty((tokens, num_heads, value_dim), dtype=q.dtype, device=q.device)
    num_tiles = tiles.shape[1]
    if not num_tiles:
        return out
    if cache.stride(3) != 1 or q.stride(2) != 1:
        raise ValueError(f"latent prefill needs a contiguous last dim; got cache strides {cache.stride()}, "
                         f"q strides {q.stride()}")
    block_h, block_t = prefill_head_block(num_heads, block_m)
    _latent_prefill_kernel[(head_blocks(num_heads, block_h), num_tiles)](
        q, cache, out, block_tables, tiles[0], tiles[1], seq_info[0], seq_info[1], seq_info[2], q.stride(0),
        q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0), scale * LOG2E,
        H=num_heads, BLOCK_H=block_h, BLOCK_T=block_t, DV=value_dim, DR=dim - value_dim,
        DRP=max(16, next_pow2(dim - value_dim)), PAGE=cache.shape[1], BLOCK_STRIDE=cache.stride(0),
        TOKEN_STRIDE=cache.stride(1), BLOCK_N=block_n, IEEE=q.dtype == torch.float32, num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def head_blocks(num_heads: int, block_h: int) -> int:
    return -(-num_heads // block_h)


def latent_num_splits(batch_size: int, num_head_blocks: int, num_sms: int, waves: int = SPLIT_WAVES[0]) -> int:
    """Splits per sequence so that batch x head blocks x splits programs make about `waves` per SM."""
    return max(1, min(MAX_DECODE_SPLITS, -(-waves * num_sms // max(1, batch_size * num_head_blocks))))


def latent_decode(q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                  scale: float, value_dim: int, num_splits: int, block_h: int = 16, block_n: int = 32,
                  num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """One query per sequence: q [B, H, D] (rows may be strided; D = value_dim + rope dims) over the first
    context_lens[b] entries of its cache (`cache` [num_blocks, block_size, 1, D]) -> [B, H, value_dim],
    the attention-weighted sum of the entries' first value_dim columns."""
    batch, num_heads, dim = q.shape
    out = torch.empty((batch, num_heads, value_dim), dtype=q.dtype, device=q.device)
    if not batch:
        return out
    if cache.stride(3) != 1 or q.stride(2) != 1:
        raise ValueError(f"latent decode needs a contiguous last dim; got cache strides {cache.stride()}, "
                         f"q strides {q.stride()}")
    direct = num_splits == 1
    parts = 1 if direct else batch * num_heads * num_splits
    part_o = torch.empty((parts, value_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((parts,), dtype=torch.float32, device=q.device)
    _latent_decode_kernel[(head_blocks(num_heads, block_h), batch, num_splits)](
        q, cache, block_tables, context_lens, out, part_o, part_lse, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), block_tables.stride(0), num_splits, scale * LOG2E,
        H=num_heads, BLOCK_H=block_h, DV=value_dim, DR=dim - value_dim, DRP=max(16, next_pow2(dim - value_dim)),
        PAGE=cache.shape[1], BLOCK_STRIDE=cache.stride(0), TOKEN_STRIDE=cache.stride(1), BLOCK_N=block_n,
        DIRECT=direct, IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    if not direct:
        _decode_merge_kernel[(batch, num_heads)](
            part_o, part_lse, context_lens, out, out.stride(0), out.stride(1), num_splits,
            HQ=num_heads, D=value_dim, SP=next_pow2(num_splits), BLOCK_N=block_n, num_warps=4,
        )
    return out


def usable_configs(num_heads: int) -> list[tuple[int, int, int, int]]:
    """The tiles of `LATENT_DECODE_CONFIGS` whose head block is not larger than the heads need (16 at least:
    the smallest M of a matrix product)."""
    widest = max(16, next_pow2(num_heads))
    return [config for config in LATENT_DECODE_CONFIGS if config[0] <= widest]


def random_paged_cache(lengths: torch.Tensor, page: int, dim: int, dtype: torch.dtype, device: torch.device,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cache [blocks, page, 1, dim] of random entries, block tables [B, max blocks] of randomly placed
    blocks) holding sequences of `lengths` tokens: the tuning's and the benchmark's inputs."""
    widths = (lengths + page - 1) // page
    cache = torch.randn((int(widths.sum()), page, 1, dim), generator=generator).to(device=device, dtype=dtype)
    blocks = torch.randperm(cache.shape[0], generator=generator)
    tables = torch.zeros(len(lengths), int(widths.max()), dtype=torch.long)
    for row, (start, width) in enumerate(zip((torch.cumsum(widths, 0) - widths).tolist(), widths.tolist())):
        tables[row, :width] = blocks[start : start + width]
    return cache, tables.to(device)


def tune_latent_decode(num_heads: int, dim: int, value_dim: int, page: int, dtype: torch.dtype,
                       device: torch.device, batch: int, context: int,
                       repeats: int = 7) -> tuple[tuple[int, int, int, int], int]:
    """The fastest (tile, split waves) of the usable tiles x `SPLIT_WAVES` for a full batch of sequences of up
    to `context` tokens (lengths spread over [context / 4, context], as `paged_attention.tune_decode` times
    the dense decode: 8 calls replayed from a CUDA graph). A tile that fails to compile (too much shared
    memory on this GPU) or disagrees with the default one (which the self-check compared with the reference)
    is skipped."""
    lengths = torch.linspace(context, max(1, context // 4), batch).round().long()
    cache, tables = random_paged_cache(lengths, page, dim, dtype, device)
    q = torch.randn(batch, num_heads, dim, device=device, dtype=dtype)
    context_lens = lengths.to(device)
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    timings, expected = {}, None
    for config in usable_configs(num_heads):
        for waves in SPLIT_WAVES:
            splits = latent_num_splits(batch, head_blocks(num_heads, config[0]), num_sms, waves)

            def call(config=config, splits=splits):
                return latent_decode(q, cache, tables, context_lens, dim**-0.5, value_dim, splits, *config)

            try:
                out = call().float()
            except Exception as e:  # noqa: BLE001 (compile and out-of-resources errors come in many types)
                logger.warning("latent decode tile %s does not compile here (%s: %s)", config, type(e).__name__, e)
                break
            if expected is None:
                expected = out
            elif not ((out - expected).norm() <= 1e-2 * expected.norm()):
                logger.warning("latent decode tile %s with %d splits disagrees with the default; skipped", config,
                               splits)
                continue
            timings[config, waves] = median_cuda_ms(cuda_graph_of(call, 8, device).replay, repeats)
    return min(timings, key=timings.get) if timings else (LATENT_DECODE_CONFIGS[0], SPLIT_WAVES[0])


def compile_latent_kernels(num_heads: int, dim: int, value_dim: int, page: int, dtype: torch.dtype,
                           device: torch.device, config: tuple[int, int, int, int]) -> None:
    """Compile every variant the engine launches (the entry write; prefill; decode with one split and with
    several, one merge variant per power of two) on scratch tensors shaped like the model's, so that no
    request waits for a compile. q is contiguous [T, H, D], as the model's concatenation makes it."""
    tokens, blocks = 2 * page + 3, 4
    cache = torch.zeros((blocks, page, 1, dim), device=device, dtype=dtype)
    store_latent(torch.randn(tokens, 1, dim, device=device, dtype=dtype), cache, torch.arange(tokens, device=device))
    tables = torch.arange(blocks, device=device).view(1, blocks)
    prefill_q = torch.randn(tokens, num_heads, dim, device=device, dtype=dtype)
    block_m = LATENT_PREFILL_CONFIGS[0][0]
    tiles, seq_info = latent_prefill_arguments([tokens], [0], num_heads, block_m, device)
    latent_prefill(prefill_q, cache, tables, tiles, seq_info, dim**-0.5, value_dim, *LATENT_PREFILL_CONFIGS[0])
    q = torch.randn(1, num_heads, dim, device=device, dtype=dtype)
    for splits in (1, 2, 4, 8, MAX_DECODE_SPLITS):
        latent_decode(q, cache, tables, torch.tensor([tokens], device=device), dim**-0.5, value_dim, splits, *config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TritonLatentAttention:
    """Attention backend of the latent models (the `prepare` / `forward` contract of `TorchPagedAttention`):
    the entry write, prefill and decode in Triton (module docstring). Both return [T or B, H, value_dim], the
    reference [T, H, D]; the model keeps the first value_dim columns of either.

    prepare() derives, once per step: for decode, the split count (a Python int that depends only on the
    batch size, so a captured CUDA graph stays valid); for prefill, the query tiles and the per-sequence
    offsets, in one host-to-device copy.
    """

    def __init__(self, num_heads: int, value_dim: int, num_sms: int, decode_config=LATENT_DECODE_CONFIGS[0],
                 waves: int = SPLIT_WAVES[0], prefill_config=LATENT_PREFILL_CONFIGS[0]):
        self.num_heads, self.value_dim, self.num_sms = num_heads, value_dim, num_sms
        self.decode_config = decode_config  # (BLOCK_H, BLOCK_N, num_warps, num_stages), see `tune_latent_decode`
        self.waves = waves
        self.prefill_config = prefill_config  # (BLOCK_M, BLOCK_N, num_warps, num_stages)

    @classmethod
    def for_device(cls, num_heads: int, dim: int, value_dim: int, page: int, dtype: torch.dtype,
                   device: torch.device, max_batch: int, max_len: int) -> TritonLatentAttention:
        """The backend for an engine on `device`; on CUDA with the decode tile and split waves timed there and
        every kernel variant compiled."""
        if device.type != "cuda":
            return cls(num_heads, value_dim, 4)
        config, waves = tune_latent_decode(num_heads, dim, value_dim, page, dtype, device, min(256, max_batch),
                                           min(1024, max_len))
        logger.info("latent decode attention tile (BLOCK_H, BLOCK_N, warps, stages): %s, %d programs per SM",
                    config, waves)
        compile_latent_kernels(num_heads, dim, value_dim, page, dtype, device, config)
        return cls(num_heads, value_dim, torch.cuda.get_device_properties(device).multi_processor_count, config,
                   waves)

    def num_splits(self, batch_size: int) -> int:
        return latent_num_splits(batch_size, head_blocks(self.num_heads, self.decode_config[0]), self.num_sms,
                                 self.waves)

    def workspace_bytes(self, num_heads: int, head_dim: int, max_num_seqs: int) -> int:
        """Decode's float32 partial outputs at the batch size that needs the most (prefill reads the cache in
        place: no workspace)."""
        parts = max(b * self.num_splits(b) for b in range(1, max_num_seqs + 1))
        return parts * num_heads * (self.value_dim + 1) * 4

    def prepare(self, meta) -> None:
        if meta.is_prefill:
            meta.backend_data["tiles"], meta.backend_data["seq_info"] = latent_prefill_arguments(
                meta.query_lens, meta.cached_lens, self.num_heads, self.prefill_config[0], meta.slot_mapping.device)
        else:
            meta.backend_data["num_splits"] = self.num_splits(len(meta.query_lens))

    def forward(self, q, k, v, k_cache, v_cache, meta, scale: float, kv_stored: bool = False) -> torch.Tensor:
        """q [T, H, D], k = v = the new entries [T, 1, D]; k_cache is v_cache (one latent cache)."""
        if not kv_stored:
            store_latent(k, k_cache, meta.slot_mapping)
        if meta.is_prefill:
            return latent_prefill(q, k_cache, meta.block_tables, meta.backend_data["tiles"],
                                  meta.backend_data["seq_info"], scale, self.value_dim, *self.prefill_config)
        return latent_decode(q, k_cache, meta.block_tables, meta.context_lens, scale, self.value_dim,
                             meta.backend_data["num_splits"], *self.decode_config)
