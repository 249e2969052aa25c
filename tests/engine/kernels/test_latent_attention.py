"""Triton latent attention (`kernels/latent_attention.py`: entry write, split-K decode over a head block,
causal prefill over (token, head) tiles after a cached prefix) vs float64 attention over the gathered
entries, on CPU through the interpreter at small sizes (the GPU sizes: tests/engine/test_deepseek_v3_gpu.py);
its self-check; and the tiny DeepSeek-V3 engine on it vs Hugging Face, eagerly (prefill kernel after a
cached prefix included) and through the CUDA-graph inputs with padding rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.kernels import latent_attention as la
from temper.engine.kernels.self_check import passing_groups

PAGE = 16


def reference(q, cache, tables, context_lens, value_dim):
    """float64 softmax(q e^T / sqrt(D)) e[:, :value_dim] per sequence over its first context_lens[b] entries."""
    outs, flat, dim = [], cache.reshape(-1, cache.shape[-1]).double(), q.shape[-1]
    for b, n in enumerate(context_lens.tolist()):
        pos = torch.arange(n, device=q.device)
        e = flat[tables[b, pos // PAGE] * PAGE + pos % PAGE]
        scores = q[b].double() @ e.T * dim**-0.5
        outs.append(scores.softmax(-1) @ e[:, :value_dim] if n else torch.zeros(q.shape[1], value_dim, device=q.device,
                                                                              dtype=torch.float64))
    return torch.stack(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads, value_dim, rope_dim, num_splits, block_h", [
    (4, 32, 16, 1, 16), (20, 32, 16, 3, 16), (5, 64, 8, 16, 16), (36, 32, 16, 2, 32),
])
def test_store_and_decode_match_attention_over_the_entries(num_heads, value_dim, rope_dim, num_splits, block_h,
                                                           dtype, device):
    dim, lengths = value_dim + rope_dim, torch.tensor([1, 17, 70, 32, 16])
    g = torch.Generator().manual_seed(0)
    cache, tables = la.random_paged_cache(lengths + 1, PAGE, dim, dtype, torch.device(device), g)
    used = torch.zeros(cache.shape[0] * PAGE, dtype=torch.bool)
    for row, n in enumerate(lengths.tolist()):
        pos = torch.arange(n + 1)
        used[tables[row, pos // PAGE].cpu() * PAGE + pos % PAGE] = True
    cache.view(-1, dim)[~used.to(device)] = float("nan")  # decode must never read a slot it was not given
    new = torch.randn(len(lengths) + 2, 1, dim, generator=g).to(device=device, dtype=dtype)
    slots = [int(tables[i, n // PAGE]) * PAGE + n % PAGE for i, n in enumerate(lengths.tolist())] + [-1, -1]
    before = cache.clone()
    la.store_latent(new, cache, torch.tensor(slots, device=device))
    flat = cache.view(-1, dim)
    assert torch.equal(flat[slots[:-2]], new[:-2, 0])
    untouched = torch.ones(flat.shape[0], dtype=torch.bool, device=device)
    untouched[slots[:-2]] = False
    torch.testing.assert_close(flat[untouched], before.view(-1, dim)[untouched], rtol=0, atol=0, equal_nan=True)
    # two padding rows, as in a CUDA-graph bucket: context 0, zeros out
    rows = torch.cat([tables, torch.zeros(2, tables.shape[1], dtype=tables.dtype, device=device)])
    context = torch.cat([lengths + 1, torch.zeros(2, dtype=torch.long)]).to(device)
    q = torch.randn(len(context), num_heads, dim, generator=g).to(device=device, dtype=dtype)
    out = la.latent_decode(q, cache, rows, context, dim**-0.5, value_dim, num_splits, block_h, 16)
    expected = reference(q, cache, rows, context, value_dim)
    assert out.shape == (len(context), num_heads, value_dim) and torch.isfinite(out).all()
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < (1e-6 if dtype == torch.float32 else 1e-2), err
    assert torch.equal(out[-2:], torch.zeros_like(out[-2:]))


def causal_reference(q, cache, tables, query_lens, cached_lens, value_dim):
    """float64 causal attention of each sequence's packed queries (positions cached_lens[b]..) over its entries."""
    outs, flat, dim, start = [], cache.reshape(-1, cache.shape[-1]).double(), q.shape[-1], 0
    for b, (n, cached) in enumerate(zip(query_lens, cached_lens)):
        pos = torch.arange(cached + n)
        e = flat[tables[b, pos // PAGE] * PAGE + pos % PAGE]
        scores = torch.einsum("thd,ld->thl", q[start : start + n].double(), e) * dim**-0.5
        visible = pos[None, :] <= (cached + torch.arange(n))[:, None]
        outs.append(scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1) @ e[:, :value_dim])
        start += n
    return torch.cat(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads, value_dim, rope_dim, block_m, block_n", [
    (4, 32, 16, 32, 16), (20, 32, 16, 16, 32), (2, 64, 8, 16, 16), (3, 32, 16, 64, 16),
    (2, 512, 64, 16, 16),  # DeepSeek-V3's entry
])
def test_prefill_matches_causal_attention_after_cached_prefixes(num_heads, value_dim, rope_dim, block_m, block_n,
                                                                 dtype, device):
    """Sequences with and without a cached prefix, lengths that are no multiple of the page or the tile, one
    query alone; every slot the kernel was not given is NaN, so a read past a context or a page shows."""
    dim, g = value_dim + rope_dim, torch.Generator().manual_seed(1)
    query_lens, cached_lens = [13, 1, 40, 5, 17], [0, 21, 16, 3, 0]
    lengths = torch.tensor([c + n for c, n in zip(cached_lens, query_lens)])
    cache, tables = la.random_paged_cache(lengths, PAGE, dim, dtype, torch.device(device), g)
    used = torch.zeros(cache.shape[0] * PAGE, dtype=torch.bool)
    for row, n in enumerate(lengths.tolist()):
        pos = torch.arange(n)
        used[tables[row, pos // PAGE].cpu() * PAGE + pos % PAGE] = True
    cache.view(-1, dim)[~used.to(device)] = float("nan")
    q = torch.randn(sum(query_lens), num_heads, dim + 3, generator=g).to(device=device, dtype=dtype)[..., :dim]
    tiles, seq_info = la.latent_prefill_arguments(query_lens, cached_lens, num_heads, block_m, torch.device(device))
    out = la.latent_prefill(q, cache, tables, tiles, seq_info, dim**-0.5, value_dim, block_m, block_n, 4, 2)
    expected = causal_reference(q, cache, tables, query_lens, cached_lens, value_dim)
    assert out.shape == (sum(query_lens), num_heads, value_dim) and torch.isfinite(out).all()
    err = ((out.double() - expected).norm() / expected.norm()).item()
    assert err < (1e-6 if dtype == torch.float32 else 1e-2), err


def test_prefill_tiles_hold_tokens_times_heads():
    assert la.prefill_head_block(16, 32) == (16, 2) and la.prefill_head_block(128, 32) == (32, 1)
    assert la.prefill_head_block(3, 16) == (4, 4) and la.prefill_head_block(20, 16) == (16, 1)


def latent_shape(**fields):
    return SimpleNamespace(**{**dict(num_heads=4, num_kv_heads=1, head_dim=48, hidden_size=64, intermediate_size=96,
                                     block_size=16, vocab_size=1024, qk_norm=False, experts=None,
                                     latent_value_dim=32), **fields})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_check_passes_the_latent_kernels(dtype, device):
    assert passing_groups(torch.device(device), dtype, latent_shape(), {"layers", "attention"}) == {"layers",
                                                                                                   "attention"}


def test_self_check_leaves_out_latent_attention_that_disagrees_or_cannot_serve_the_shape(device, monkeypatch):
    assert passing_groups(torch.device(device), torch.float32, latent_shape(latent_value_dim=24),
                          {"attention"}) == set()  # not a power of two
    for name in ("latent_decode", "latent_prefill"):
        real = getattr(la, name)
        with monkeypatch.context() as patch:
            patch.setattr(la, name, lambda *args, real=real: real(*args) * 1.01)
            assert passing_groups(torch.device(device), torch.float32, latent_shape(), {"attention"}) == set(), name


def test_workspace_covers_the_largest_partial_outputs():
    backend = la.TritonLatentAttention(16, 512, num_sms=132)
    parts = max(b * backend.num_splits(b) for b in range(1, 257))
    assert backend.workspace_bytes(16, 576, 256) >= parts * 16 * 513 * 4
    assert la.latent_num_splits(1, 1, 132) == 16 and la.latent_num_splits(256, 1, 132, waves=1) == 1
    assert la.usable_configs(16) == [c for c in la.LATENT_DECODE_CONFIGS if c[0] == 16]
    assert la.usable_configs(128) == list(la.LATENT_DECODE_CONFIGS)


@pytest.mark.slow
def test_deepseek_v3_engine_on_the_latent_kernels_matches_hf(model_dir, hf, device, monkeypatch):
    """Eager prefill and decode on the kernels, a prefix-cache hit (the prefill kernel starts after a cached
    prefix the kernels wrote), then the CUDA-graph path with the capture replaced by plain calls: padded
    buckets (slot -1, context 0)."""
    from temper.engine.cuda_graph import DecodeGraphs

    path = model_dir("deepseek_v3")
    base = hf.prompts(1, 17, 17, seed=0)[0]
    prompts = [hf.prompts(1, 5, 5, seed=1)[0], base, base + [5, 6, 7]]  # the last hits the prefix cache
    # on CUDA the self-checked groups: float32 leaves out the grouped experts (a bf16 kernel), not the attention
    kwargs = {"device": device, "num_kv_blocks": 64, "max_model_len": 64, "max_num_seqs": 4, "dtype": "float32",
              "kernels": "triton" if device == "cpu" else "auto", "cuda_graphs": False}
    engine = LLMEngine(EngineArgs(model=str(path), **kwargs))
    assert isinstance(engine.model_runner.attention_backend, la.TritonLatentAttention)
    prefixes, real = [], la.latent_prefill
    monkeypatch.setattr(la, "latent_prefill", lambda q, cache, tables, tiles, seq_info, *args: (
        prefixes.extend(seq_info[2].tolist()), real(q, cache, tables, tiles, seq_info, *args))[1])
    greedy = SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True)
    outs = engine.generate(prompts, greedy)
    assert outs[2].cached_tokens == 16 and 16 in prefixes, "the prefill kernel ran after the cached prefix"
    for prompt, out in zip(prompts, outs):
        assert out.output_token_ids == hf.greedy(path, prompt, 4)
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), 0.0)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4
    graphs = DecodeGraphs(engine.model_runner, max_batch=4)
    graphs._capture_one = lambda forward: forward  # replay = run the captured function again
    engine.model_runner.graphs = graphs
    outs = engine.generate(prompts, greedy)  # 3 sequences in the bucket of 4: one padding row
    assert graphs.captured
    for prompt, out in zip(prompts, outs):
        assert out.output_token_ids == hf.greedy(path, prompt, 4)
