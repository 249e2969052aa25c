"""Paged attention vs. plain causal attention over the full sequence, on random tensors."""

from __future__ import annotations

import pytest
import torch

from temper.engine import attention
from temper.engine.attention import AttentionMetadata, TorchPagedAttention

HQ, HKV, D, BS, NUM_BLOCKS = 4, 2, 8, 4, 64


def reference(q, k, v):
    """Causal attention of the last q.shape[0] queries over all of k/v; [n, HQ, D]."""
    n, total = q.shape[0], k.shape[0]
    k = k.repeat_interleave(HQ // HKV, dim=1)
    v = v.repeat_interleave(HQ // HKV, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * D**-0.5
    mask = torch.arange(total)[None, :] <= torch.arange(n)[:, None] + (total - n)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def make_meta(is_prefill, block_tables, cached, new, slots):
    padded = max(len(b) for b in block_tables)
    return AttentionMetadata(
        is_prefill=is_prefill, slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor([b + [0] * (padded - len(b)) for b in block_tables]),
        context_lens=torch.tensor([c + n for c, n in zip(cached, new)]),
        query_lens=new, cached_lens=cached, block_size=BS, backend=TorchPagedAttention(),
    )


def slot(table, pos):
    return table[pos // BS] * BS + pos % BS


@pytest.mark.parametrize("small_groups", [False, True])
def test_prefill_with_cached_prefixes_and_decode_match_reference(small_groups, monkeypatch):
    if small_groups:  # force several decode groups and query chunks
        monkeypatch.setattr(attention, "DECODE_GATHER_TOKENS", 20)
        monkeypatch.setattr(attention, "MASKED_SCORE_ELEMENTS", 3 * HQ * 13)
    g = torch.Generator().manual_seed(0)
    lengths = [5, 13, 8, 1]  # total tokens per sequence
    cached = [0, 8, 4, 0]  # tokens already in the cache (block aligned, as prefix hits are)
    perm = torch.randperm(NUM_BLOCKS, generator=g).tolist()  # scattered, non-contiguous blocks
    tables, start = [], 0
    for n in lengths:
        nb = -(-(n + 1) // BS)  # room for one decode token
        tables.append(perm[start : start + nb])
        start += nb
    k_cache = torch.zeros(NUM_BLOCKS, BS, HKV, D)
    v_cache = torch.zeros(NUM_BLOCKS, BS, HKV, D)
    full = [(torch.randn(n + 1, HQ, D, generator=g), torch.randn(n + 1, HKV, D, generator=g),
             torch.randn(n + 1, HKV, D, generator=g)) for n in lengths]
    for (_, k, v), table, c in zip(full, tables, cached):  # the cached prefix is already written
        for p in range(c):
            k_cache.view(-1, HKV, D)[slot(table, p)] = k[p]
            v_cache.view(-1, HKV, D)[slot(table, p)] = v[p]

    new = [n - c for n, c in zip(lengths, cached)]
    slots = [slot(t, p) for t, c, n in zip(tables, cached, lengths) for p in range(c, n)]
    meta = make_meta(True, tables, cached, new, slots)
    meta.backend.prepare(meta)
    q = torch.cat([f[0][c:n] for f, c, n in zip(full, cached, lengths)])
    k = torch.cat([f[1][c:n] for f, c, n in zip(full, cached, lengths)])
    v = torch.cat([f[2][c:n] for f, c, n in zip(full, cached, lengths)])
    out = meta.backend.forward(q, k, v, k_cache, v_cache, meta, D**-0.5)
    expected = torch.cat([reference(f[0][c:n], f[1][:n], f[2][:n]) for f, c, n in zip(full, cached, lengths)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # Decode one more token for every sequence.
    meta = make_meta(False, tables, lengths, [1] * len(lengths), [slot(t, n) for t, n in zip(tables, lengths)])
    meta.backend.prepare(meta)
    q = torch.stack([f[0][n] for f, n in zip(full, lengths)])
    k = torch.stack([f[1][n] for f, n in zip(full, lengths)])
    v = torch.stack([f[2][n] for f, n in zip(full, lengths)])
    out = meta.backend.forward(q, k, v, k_cache, v_cache, meta, D**-0.5)
    expected = torch.cat([reference(f[0][n : n + 1], f[1][: n + 1], f[2][: n + 1]) for f, n in zip(full, lengths)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_sequences_in_one_batch_read_kv_written_by_each_other():
    """Two sequences share a prefix block that the first one computes in this very batch."""
    g = torch.Generator().manual_seed(1)
    k_cache, v_cache = torch.zeros(NUM_BLOCKS, BS, HKV, D), torch.zeros(NUM_BLOCKS, BS, HKV, D)
    q, k, v = torch.randn(6, HQ, D, generator=g), torch.randn(6, HKV, D, generator=g), torch.randn(6, HKV, D, generator=g)
    tables = [[3, 7], [3, 9]]  # block 3 holds the shared first 4 tokens
    # seq 0 computes all 6 tokens; seq 1 (same 4-token prefix, cached) computes only its last 2.
    slots = [slot(tables[0], p) for p in range(6)] + [slot(tables[1], p) for p in (4, 5)]
    meta = make_meta(True, tables, [0, 4], [6, 2], slots)
    meta.backend.prepare(meta)
    out = meta.backend.forward(torch.cat([q, q[4:]]), torch.cat([k, k[4:]]), torch.cat([v, v[4:]]),
                               k_cache, v_cache, meta, D**-0.5)
    torch.testing.assert_close(out[6:], out[4:6], rtol=1e-5, atol=1e-5)
