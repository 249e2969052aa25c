"""DeepSeek-V3 on CUDA (GPU only): the latent decode and prefill kernels (`kernels/latent_attention.py`)
against float64 attention and the reference backend at Moonlight's and DeepSeek-V3's head counts (16 and
128; 16 and 32 per rank of DeepSeek-V3 under tensor parallelism 8 and 4), every decode tile the start-up
tuning may pick and every prefill tile, decode in a CUDA graph, the self-check (prefill and decode); and, on
a random model of Moonlight-16B-A3B's shape cut to 3 layers (one dense, two with 64 experts), the engine
against Hugging Face with the same criteria as `test_gpu_parity.py`'s for the dense path: bf16 on the latent
kernels with decode from CUDA graphs, fp32 on the latent kernels eagerly (the grouped experts are bf16 only,
so no graphs); kernels="torch" keeps the reference backend. The tiny
DeepSeek-V3 on the latent kernel: fp32 greedy tokens equal to HF's, bf16 from CUDA graphs."""

from __future__ import annotations

import gc

import pytest
import torch
from test_gpu_parity import BF16_ARGMAX_SLACK, NEW_TOKENS, NUM_PROMPTS, parity_report, random_prompts

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.attention import AttentionMetadata, TorchPagedAttention
from temper.engine.kernels.self_check import passing_groups
from temper.testing.tiny_models import build_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
triton = pytest.importorskip("triton")

from temper.engine.kernels import latent_attention as la  # noqa: E402 (defines Triton kernels)


# The engine sizes its KV cache from what its warm-up leaves free; the reference latent attention's prefill of an
# 8k-token batch (the default) over a 164k vocabulary takes tens of GiB, and the HF model of the same test sits beside it
# (the default batch left no room on an 80 GB H100 in fp32). The prompts here are under 240 tokens.
SMALL_ENGINE = {"mem_fraction_static": 0.5, "max_model_len": 512, "max_num_batched_tokens": 2048}


@pytest.fixture(scope="module")
def moonlight_3_layers(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("moonlight"), "deepseek_v3", preset="moonlight-16b-a3b",
                            num_layers=3, dtype=torch.bfloat16)


PAGE, DIM, RANK = 16, 512 + 64, 512  # DeepSeek-V3's and Moonlight's cache entry: [c (512), k_rope (64)]


def decode_inputs(num_heads: int, batch: int, seed: int = 0):
    """q [B, H, 576], a paged cache of random entries and its tables, context lengths: 1, a page, a page + 1,
    lengths that are no multiple of the page, and beyond 2048 (many splits of many tiles), then random."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, PAGE, PAGE + 1, 1000, 2049, 3001][:batch] + torch.randint(
        1, 2500, (max(0, batch - 6),), generator=g).tolist())
    cache, tables = la.random_paged_cache(lengths, PAGE, DIM, torch.bfloat16, torch.device("cuda"), g)
    q = torch.randn(batch, num_heads, DIM, generator=g).to("cuda", torch.bfloat16)
    return q, cache, tables, lengths.cuda()


def float64_attention(q, cache, tables, lengths):
    outs, flat = [], cache.view(-1, DIM).double()
    for b, n in enumerate(lengths.tolist()):
        pos = torch.arange(n, device="cuda")
        entries = flat[tables[b, pos // PAGE] * PAGE + pos % PAGE]
        outs.append((q[b].double() @ entries.T * DIM**-0.5).softmax(-1) @ entries[:, :RANK])
    return torch.stack(outs)


def reference_backend(q, cache, tables, lengths):
    backend = TorchPagedAttention()
    meta = AttentionMetadata(is_prefill=False, slot_mapping=torch.empty(0, dtype=torch.long, device="cuda"),
                             block_tables=tables, context_lens=lengths, query_lens=[1] * len(lengths),
                             cached_lens=[n - 1 for n in lengths.tolist()], block_size=PAGE, backend=backend)
    backend.prepare(meta)
    return backend.forward(q, None, None, cache, cache, meta, DIM**-0.5, kv_stored=True)[..., :RANK]


def relative_error(out, expected) -> float:
    return ((out.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("num_heads", [16, 32, 128])
def test_latent_decode_matches_float64_attention_and_the_reference_backend(num_heads, batch):
    q, cache, tables, lengths = decode_inputs(num_heads, batch)
    expected = float64_attention(q, cache, tables, lengths)
    # The reference expands the entries to every head (tens of GiB at 128 heads x 64 sequences of up to 3k)
    reference_error = relative_error(reference_backend(q, cache, tables, lengths), expected) if batch < 64 else 0.005
    blocks = la.head_blocks(num_heads, la.LATENT_DECODE_CONFIGS[0][0])
    for splits in sorted({1, 16} | {la.latent_num_splits(batch, blocks, 132, waves) for waves in la.SPLIT_WAVES}):
        out = la.latent_decode(q, cache, tables, lengths, DIM**-0.5, RANK, splits)
        assert out.shape == (batch, num_heads, RANK) and torch.isfinite(out).all()
        error = relative_error(out, expected)
        assert error < 1e-2 and error < 2 * reference_error + 1e-3, (splits, error, reference_error)


@pytest.mark.parametrize("num_heads", [16, 128])
def test_every_tile_the_tuning_may_pick_is_right(num_heads):
    q, cache, tables, lengths = decode_inputs(num_heads, 9, seed=1)
    expected = float64_attention(q, cache, tables, lengths)
    for config in la.usable_configs(num_heads):
        splits = la.latent_num_splits(9, la.head_blocks(num_heads, config[0]), 132)
        assert relative_error(la.latent_decode(q, cache, tables, lengths, DIM**-0.5, RANK, splits, *config),
                              expected) < 1e-2, config
    config, waves = la.tune_latent_decode(num_heads, DIM, RANK, PAGE, torch.bfloat16, torch.device("cuda"), 16, 256)
    assert config in la.usable_configs(num_heads) and waves in la.SPLIT_WAVES


def test_latent_decode_replays_from_a_cuda_graph_with_new_lengths_and_tables():
    q, cache, tables, lengths = decode_inputs(16, 12, seed=2)
    static = [q.clone(), tables.clone(), lengths.clone()]
    splits = la.latent_num_splits(12, 1, 132)

    def call():
        return la.latent_decode(static[0], cache, static[1], static[2], DIM**-0.5, RANK, splits)

    call()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    # other queries, the sequences in another order (their tables' rows swapped), shorter, one a padding row
    new_q = torch.randn_like(q)
    new_tables, new_lengths = tables.flip(0), (lengths.flip(0) * 0.7).long().clamp_min(1)
    new_lengths[-1] = 0
    for buffer, new in zip(static, (new_q, new_tables, new_lengths)):
        buffer.copy_(new)
    graph.replay()
    expected = float64_attention(new_q, cache, new_tables, new_lengths.clamp_min(1))
    assert relative_error(out[:-1], expected[:-1]) < 1e-2
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))


def prefill_inputs(num_heads: int, seed: int = 0):
    """A prefill batch (packed q [T, H, 576], cache, tables, query and cached-prefix lengths): one query after
    nothing, a page's worth after a page, a chunk after 1000 cached tokens, long prompts without and with a
    prefix, lengths no multiple of the page or a tile."""
    g = torch.Generator().manual_seed(seed)
    query_lens, cached_lens = [1, 17, 250, 600, 130], [0, 16, 1000, 0, 37]
    lengths = torch.tensor([c + n for c, n in zip(cached_lens, query_lens)])
    cache, tables = la.random_paged_cache(lengths, PAGE, DIM, torch.bfloat16, torch.device("cuda"), g)
    q = torch.randn(sum(query_lens), num_heads, DIM, generator=g).to("cuda", torch.bfloat16)
    return q, cache, tables, query_lens, cached_lens


def float64_causal_attention(q, cache, tables, query_lens, cached_lens):
    outs, flat, start = [], cache.view(-1, DIM).double(), 0
    for b, (n, cached) in enumerate(zip(query_lens, cached_lens)):
        pos = torch.arange(cached + n, device="cuda")
        entries = flat[tables[b, pos // PAGE] * PAGE + pos % PAGE]
        scores = torch.einsum("thd,ld->thl", q[start : start + n].double(), entries) * DIM**-0.5
        visible = pos[None, :] <= (cached + torch.arange(n, device="cuda"))[:, None]
        outs.append(scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1) @ entries[:, :RANK])
        start += n
    return torch.cat(outs)


def reference_prefill(q, cache, tables, query_lens, cached_lens):
    backend = TorchPagedAttention()
    meta = AttentionMetadata(is_prefill=True, slot_mapping=torch.empty(0, dtype=torch.long, device="cuda"),
                             block_tables=tables, query_lens=query_lens, cached_lens=cached_lens, block_size=PAGE,
                             context_lens=torch.tensor([c + n for c, n in zip(cached_lens, query_lens)], device="cuda"),
                             backend=backend)
    backend.prepare(meta)
    # every sequence through the cache (without a prefix the reference would attend to its k argument instead)
    meta.backend_data["context_slots"] = [
        (tables[i, torch.arange(c + n, device="cuda") // PAGE] * PAGE + torch.arange(c + n, device="cuda") % PAGE)
        for i, (c, n) in enumerate(zip(cached_lens, query_lens))]
    shape_only = cache.new_empty(q.shape[0], 1, DIM)  # kv_stored: only its shape is read
    return backend.forward(q, shape_only, shape_only, cache, cache, meta, DIM**-0.5, kv_stored=True)[..., :RANK]


@pytest.mark.parametrize("num_heads", [16, 32, 128])
def test_latent_prefill_matches_float64_attention_and_the_reference_backend(num_heads):
    """Every tile of `LATENT_PREFILL_CONFIGS` (the default must compile; another may be too large for this GPU's
    shared memory, and is then skipped as the benchmark skips it)."""
    q, cache, tables, query_lens, cached_lens = prefill_inputs(num_heads)
    expected = float64_causal_attention(q, cache, tables, query_lens, cached_lens)
    reference_error = relative_error(reference_prefill(q, cache, tables, query_lens, cached_lens), expected)
    for index, config in enumerate(la.LATENT_PREFILL_CONFIGS):
        tiles, seq_info = la.latent_prefill_arguments(query_lens, cached_lens, num_heads, config[0],
                                                      torch.device("cuda"))
        try:
            out = la.latent_prefill(q, cache, tables, tiles, seq_info, DIM**-0.5, RANK, *config)
        except triton.runtime.errors.OutOfResources:
            assert index > 0, "the default prefill tile must fit"
            continue
        assert out.shape == (sum(query_lens), num_heads, RANK) and torch.isfinite(out).all()
        error = relative_error(out, expected)
        assert error < 1e-2 and error < 2 * reference_error + 2e-3, (config, error, reference_error)


@pytest.mark.parametrize("num_heads", [16, 128])
def test_self_check_keeps_the_latent_kernel(num_heads):
    from types import SimpleNamespace

    shape = SimpleNamespace(num_heads=num_heads, num_kv_heads=1, head_dim=DIM, hidden_size=2048,
                            intermediate_size=11264, block_size=PAGE, vocab_size=1024, qk_norm=False, experts=None,
                            latent_value_dim=RANK)
    assert passing_groups(torch.device("cuda"), torch.bfloat16, shape, {"layers", "attention"}) == {"layers",
                                                                                                   "attention"}


def free_engine() -> None:
    gc.collect()
    torch.cuda.empty_cache()  # free the KV cache before the next test sizes its own


def test_latent_kernel_and_decode_graphs_on_cuda(moonlight_3_layers):
    engine = LLMEngine(EngineArgs(model=str(moonlight_3_layers), device="cuda", **SMALL_ENGINE))
    runner = engine.model_runner
    assert {"layers", "attention", "moe"} <= runner.kernel_groups
    assert isinstance(runner.attention_backend, la.TritonLatentAttention) and runner.graphs is not None
    assert runner.attention_backend.decode_config in la.usable_configs(16)
    assert tuple(runner.kv_cache.shape[:2]) == (1, 3) and tuple(runner.kv_cache.shape[-2:]) == (1, DIM)
    engine.generate([[1, 2, 3]] * 3, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
    assert runner.graphs.captured, "the engine decoded from CUDA graphs"
    del engine, runner
    free_engine()
    engine = LLMEngine(EngineArgs(model=str(moonlight_3_layers), device="cuda", kernels="torch", **SMALL_ENGINE))
    assert isinstance(engine.model_runner.attention_backend, TorchPagedAttention) and engine.model_runner.graphs is None
    del engine
    free_engine()


def test_tiny_engine_on_the_latent_kernel_matches_hf(model_dir, hf):
    """The spread tiny DeepSeek-V3 on the latent kernel: in float32 it decodes eagerly (the grouped experts are
    bf16 only, so no graphs) and its greedy tokens are HF's; in bf16 it decodes from CUDA graphs, held to HF
    with the dense path's bf16 criteria (near-ties flip under any change of rounding: see test_moe_gpu.py)."""
    path = model_dir("deepseek_v3")
    prompts = hf.prompts(12, 3, 80, seed=5)
    greedy = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    kwargs = {"num_kv_blocks": 256, "max_model_len": 160, "max_num_seqs": 16}
    engine = LLMEngine(EngineArgs(model=str(path), device="cuda", dtype="float32", **kwargs))
    assert isinstance(engine.model_runner.attention_backend, la.TritonLatentAttention)
    assert engine.model_runner.graphs is None
    outs = [o.output_token_ids for o in engine.generate(prompts, greedy)]
    assert sum(o == hf.greedy(path, p, 16) for o, p in zip(outs, prompts)) >= 0.9 * len(prompts)
    del engine
    free_engine()
    engine = LLMEngine(EngineArgs(model=str(path), device="cuda", dtype="bfloat16", **kwargs))
    runner = engine.model_runner
    assert isinstance(runner.attention_backend, la.TritonLatentAttention) and runner.graphs is not None
    engine.generate(prompts, greedy)
    assert runner.graphs.captured, "the engine decoded from CUDA graphs"
    del engine, runner
    free_engine()
    report = parity_report(path, "cuda", torch.bfloat16, prompts, 16, **kwargs)  # the same engine, graphs and all
    print(report)
    assert report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK, report
    assert report["logprob_mean_abs_diff"] <= 0.02, report


def test_fp32_greedy_and_logprobs_match_hf_on_cuda(moonlight_3_layers):
    report = parity_report(moonlight_3_layers, "cuda", torch.float32, random_prompts(NUM_PROMPTS), NEW_TOKENS,
                           **SMALL_ENGINE)
    print(report)
    assert report["identical_fraction"] >= 0.9, report
    assert report["logprob_mean_abs_diff"] <= 1e-3, report


def test_bf16_greedy_and_logprobs_match_hf_on_cuda(moonlight_3_layers):
    report = parity_report(moonlight_3_layers, "cuda", torch.bfloat16, random_prompts(NUM_PROMPTS), NEW_TOKENS,
                           **SMALL_ENGINE)
    print(report)
    assert report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK, report
    assert report["logprob_mean_abs_diff"] <= 0.02, report
