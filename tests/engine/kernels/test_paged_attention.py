"""Triton paged attention (KV write, decode, prefill) vs plain attention over full sequences.

Random caches with scattered blocks, GQA groups of 1/2/4, lengths that straddle block and tile
boundaries, cached prefixes, strided q/k/v (views of one qkv buffer, as the model passes them), and
the padding rows of a CUDA-graph batch (slot -1, context 0).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import paged_cache

from temper.engine.attention import AttentionMetadata, TorchPagedAttention
from temper.engine.kernels import paged_attention as pa

BS, NUM_BLOCKS = 16, 96


def reference(q, k, v, scale):
    """Causal attention of the last q.shape[0] queries over all of k/v, float64; [n, Hq, D]."""
    n, total, group = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    mask = torch.arange(total)[None, :] <= torch.arange(n)[:, None] + (total - n)
    scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


class Batch:
    """Sequences with random K/V in a paged cache; `lengths` tokens each, the first `cached` in the cache."""

    def __init__(self, lengths, hq, hkv, d, dtype, device, seed=0, layout="token"):
        g = torch.Generator().manual_seed(seed)
        self.hq, self.hkv, self.d, self.dtype, self.device = hq, hkv, d, dtype, device
        perm = torch.randperm(NUM_BLOCKS, generator=g).tolist()
        self.tables, start = [], 0
        for n in lengths:
            nb = -(-(n + 1) // BS)
            self.tables.append(perm[start : start + nb])
            start += nb
        assert start <= NUM_BLOCKS
        # Poison the cache: attention must never read a slot it was not given.
        self.k_cache = paged_cache((NUM_BLOCKS, BS, hkv, d), layout, dtype=dtype, device=device).fill_(float("nan"))
        self.v_cache = paged_cache((NUM_BLOCKS, BS, hkv, d), layout, dtype=dtype, device=device).fill_(float("nan"))
        self.qkv = [torch.randn(n + 1, (hq + 2 * hkv) * d, generator=g).to(dtype).to(device) for n in lengths]
        self.lengths = lengths

    def split(self, qkv):
        q, k, v = qkv.split([self.hq * self.d, self.hkv * self.d, self.hkv * self.d], dim=-1)
        return q.view(-1, self.hq, self.d), k.view(-1, self.hkv, self.d), v.view(-1, self.hkv, self.d)

    def slot(self, i, pos):
        return self.tables[i][pos // BS] * BS + pos % BS

    def write(self, i, positions):
        _, k, v = self.split(self.qkv[i])
        for p in positions:
            block, row = self.tables[i][p // BS], p % BS
            self.k_cache[block, row] = k[p]
            self.v_cache[block, row] = v[p]

    def block_tables(self, rows=None):
        tables = self.tables + [[0]] * ((rows or len(self.tables)) - len(self.tables))
        width = max(map(len, tables))
        return torch.tensor([t + [0] * (width - len(t)) for t in tables], device=self.device)

    def expected(self, i, first, last):
        q, k, v = self.split(self.qkv[i])
        return reference(q[first:last], k[:last], v[:last], self.d**-0.5)


def check(out, expected, dtype):
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert torch.isfinite(out).all()
    err = (out.double() - expected).norm() / expected.norm()
    assert err < tol, f"relative error {err:.2e}"


CONFIGS = [(4, 2, 32, torch.float32), (4, 1, 32, torch.float32), (8, 2, 64, torch.bfloat16), (2, 2, 32, torch.float32)]


@pytest.mark.parametrize("hq, hkv, d, dtype", CONFIGS)
@pytest.mark.parametrize("layout", ["token", "head"])
def test_prefill_with_cached_prefixes(hq, hkv, d, dtype, layout, device):
    lengths, cached = [5, 150, 64, 1, 97], [0, 64, 48, 0, 16]  # prefixes block aligned, as cache hits are
    batch = Batch(lengths, hq, hkv, d, dtype, device, layout=layout)
    for i, c in enumerate(cached):
        batch.write(i, range(c))
    # The packed new tokens are views of one wide qkv buffer (strided rows).
    packed = torch.cat([batch.qkv[i][c:n] for i, (c, n) in enumerate(zip(cached, lengths))])
    q, k, v = batch.split(packed)
    slots = [batch.slot(i, p) for i, (c, n) in enumerate(zip(cached, lengths)) for p in range(c, n)]
    meta = AttentionMetadata(
        is_prefill=True, slot_mapping=torch.tensor(slots, device=device), block_tables=batch.block_tables(),
        context_lens=torch.tensor(lengths, device=device), query_lens=[n - c for n, c in zip(lengths, cached)],
        cached_lens=cached, block_size=BS, backend=pa.TritonPagedAttention(hkv, d, num_sms=4),
    )
    meta.backend.prepare(meta)
    out = meta.backend.forward(q, k, v, batch.k_cache, batch.v_cache, meta, d**-0.5)
    expected = torch.cat([batch.expected(i, c, n) for i, (c, n) in enumerate(zip(cached, lengths))])
    check(out, expected, dtype)


@pytest.mark.parametrize("hq, hkv, d, dtype", CONFIGS)
@pytest.mark.parametrize("num_splits", [1, 3, 16])
@pytest.mark.parametrize("layout", ["token", "head"])
def test_decode_with_splits_and_padding_rows(hq, hkv, d, dtype, num_splits, layout, device):
    lengths = [1, 17, 150, 64, 33]
    batch = Batch(lengths, hq, hkv, d, dtype, device, seed=1, layout=layout)
    for i, n in enumerate(lengths):
        batch.write(i, range(n))
    rows = len(lengths) + 2  # two padding rows, as in a CUDA-graph bucket
    new = torch.stack([batch.qkv[i][n] for i, n in enumerate(lengths)] + [batch.qkv[0][0]] * 2)
    q, k, v = batch.split(new)
    slots = [batch.slot(i, n) for i, n in enumerate(lengths)] + [-1, -1]
    before = batch.k_cache.clone()
    pa.store_kv(k, v, batch.k_cache, batch.v_cache, torch.tensor(slots, device=device))
    written = torch.zeros(NUM_BLOCKS * BS, dtype=torch.bool)
    written[slots[: len(lengths)]] = True
    flat_before, flat_after = before.reshape(NUM_BLOCKS * BS, -1), batch.k_cache.reshape(NUM_BLOCKS * BS, -1)
    assert torch.equal(flat_after[slots[: len(lengths)]], k[: len(lengths)].reshape(len(lengths), -1))
    torch.testing.assert_close(flat_after[~written.to(device)], flat_before[~written.to(device)], rtol=0, atol=0,
                               equal_nan=True)  # nothing else written (padding rows skipped)
    context = torch.tensor([n + 1 for n in lengths] + [0, 0], device=device)
    out = pa.decode_attention(q, batch.k_cache, batch.v_cache, batch.block_tables(rows), context, d**-0.5, num_splits)
    expected = torch.cat([batch.expected(i, n, n + 1) for i, n in enumerate(lengths)])
    check(out[: len(lengths)], expected, dtype)
    assert torch.equal(out[len(lengths) :], torch.zeros_like(out[len(lengths) :]))


def test_prefill_reads_kv_written_by_another_sequence_of_the_batch(device):
    """Two sequences share a prefix block that the first one computes in this very batch."""
    hq, hkv, d = 4, 2, 32
    batch = Batch([40], hq, hkv, d, torch.float32, device, seed=2)
    q, k, v = batch.split(batch.qkv[0][:40])
    tables = [batch.tables[0], [batch.tables[0][0], batch.tables[0][1], 90]]  # seq 1 shares 2 blocks
    slots = [batch.slot(0, p) for p in range(40)] + [tables[1][2] * BS + p - 32 for p in range(32, 40)]
    meta = AttentionMetadata(
        is_prefill=True, slot_mapping=torch.tensor(slots, device=device),
        block_tables=torch.tensor([t + [0] * (3 - len(t)) for t in tables], device=device),
        context_lens=torch.tensor([40, 40], device=device), query_lens=[40, 8], cached_lens=[0, 32],
        block_size=BS, backend=pa.TritonPagedAttention(hkv, d, num_sms=4),
    )
    meta.backend.prepare(meta)
    out = meta.backend.forward(torch.cat([q, q[32:]]), torch.cat([k, k[32:]]), torch.cat([v, v[32:]]),
                               batch.k_cache, batch.v_cache, meta, d**-0.5)
    torch.testing.assert_close(out[40:], out[32:40], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_matches_the_reference_backend_on_many_sequences(device):
    """24 sequences of random lengths through both backends: prefill, then two decode steps."""
    hq, hkv, d, n = 4, 2, 32, 24
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 40, (n,), generator=g).tolist()
    tables, start = [], 0
    for length in lengths:
        nb = -(-(length + 2) // 8)
        tables.append(list(range(start, start + nb)))
        start += nb
    width = max(map(len, tables))
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device)
    caches = {name: (torch.zeros(start, 8, hkv, d, device=device), torch.zeros(start, 8, hkv, d, device=device))
              for name in ("torch", "triton")}
    backends = {"torch": TorchPagedAttention(), "triton": pa.TritonPagedAttention(hkv, d, num_sms=2)}

    def step(query_lens, cached_lens):
        total = sum(query_lens)
        q = torch.randn(total, hq, d, generator=g).to(device)
        k, v = torch.randn(total, hkv, d, generator=g).to(device), torch.randn(total, hkv, d, generator=g).to(device)
        slots = [tables[i][p // 8] * 8 + p % 8 for i, (c, m) in enumerate(zip(cached_lens, query_lens))
                 for p in range(c, c + m)]
        outs = {}
        for name, backend in backends.items():
            meta = AttentionMetadata(
                is_prefill=max(query_lens) > 1 or not cached_lens[0], slot_mapping=torch.tensor(slots, device=device),
                block_tables=block_tables, context_lens=torch.tensor([c + m for c, m in zip(cached_lens, query_lens)],
                                                                     device=device),
                query_lens=query_lens, cached_lens=cached_lens, block_size=8, backend=backend,
            )
            backend.prepare(meta)
            outs[name] = backend.forward(q, k, v, *caches[name], meta, d**-0.5)
        torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-4, atol=1e-5)

    step(lengths, [0] * n)
    step([1] * n, lengths)
    step([1] * n, [m + 1 for m in lengths])


def test_prefill_tiles_cover_every_query_once():
    seqs, firsts = pa.prefill_tiles([5, 130, 64, 1], [0, 16, 0, 3], 64)
    covered = sorted((s, f + i) for s, f in zip(seqs.tolist(), firsts.tolist()) for i in range(64)
                     if f + i < [5, 130, 64, 1][s])
    assert covered == [(s, i) for s, n in enumerate([5, 130, 64, 1]) for i in range(n)]
    assert (seqs[0], firsts[0]) == (1, 128)  # the tile with the most keys goes first


def test_decode_num_splits_fills_the_gpu():
    assert pa.decode_num_splits(256, 8, 132) == 1
    assert pa.decode_num_splits(1, 8, 132) == pa.MAX_DECODE_SPLITS
    assert 1 < pa.decode_num_splits(16, 8, 132) < pa.MAX_DECODE_SPLITS


def test_tune_decode_times_every_tile_and_returns_one(device, monkeypatch):
    if device == "cpu":
        pytest.skip("times CUDA graphs")
    timed = []
    real = pa.median_cuda_ms
    monkeypatch.setattr(pa, "median_cuda_ms", lambda fn, repeats: timed.append(fn) or real(fn, repeats))
    config = pa.tune_decode(4, 2, 64, 16, torch.bfloat16, torch.device(device), batch=8, context=100)
    assert config in pa.DECODE_CONFIGS
    assert len(timed) == len(pa.DECODE_CONFIGS)  # every tile compiled, agreed with the default, was timed
