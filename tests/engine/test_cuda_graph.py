"""Decode CUDA graphs: buckets (CPU), and on a GPU: graphs give the eager path's tokens, also after
weight updates and memory release/resume (which must re-capture); a latent-attention model (DeepSeek-V3)
decodes from them too."""

from __future__ import annotations

import gc

import pytest
import torch

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.cuda_graph import graph_buckets
from temper.engine.weights import iter_safetensors


def test_buckets_cover_every_batch_size():
    for max_batch in (1, 3, 8, 16, 100, 256, 1000):
        buckets = graph_buckets(max_batch)
        assert buckets == sorted(set(buckets)) and buckets[-1] == max_batch
        for n in range(1, max_batch + 1):
            b = next(b for b in buckets if b >= n)
            assert b - n < (16 if n <= 256 else 64) and b < 2 * n + 1  # little padding
    assert graph_buckets(256)[:6] == [1, 2, 4, 8, 16, 32]


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def agree(a: list[list[int]], b: list[list[int]]) -> bool:
    """At least 90% identical greedy continuations: graphs pad the batch, and cuBLAS may then round
    the last float32 bit differently, which can flip a near-tie."""
    return sum(x == y for x, y in zip(a, b)) >= 0.9 * len(a)


@pytest.mark.gpu
@gpu
def test_graphs_match_eager_and_survive_weight_updates_and_release(model_dir, hf):
    path, other = model_dir("qwen3", seed=0), model_dir("qwen3", seed=1)
    prompts = hf.prompts(20, 3, 60, seed=0)
    greedy = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)

    def run(engine, ps=prompts):
        return [o.output_token_ids for o in engine.generate(ps, greedy)]

    kwargs = {"device": "cuda", "dtype": "float32", "num_kv_blocks": 256, "max_model_len": 128, "max_num_seqs": 32}
    eager = LLMEngine(EngineArgs(model=str(path), cuda_graphs=False, **kwargs))
    expected = run(eager)
    eager.load_weights(iter_safetensors(other))
    expected_other = run(eager)
    del eager
    gc.collect()
    engine = LLMEngine(EngineArgs(model=str(path), **kwargs))
    graphs = engine.model_runner.graphs
    assert graphs is not None, "graphs need the Triton attention backend on CUDA"
    assert agree(run(engine), expected) and graphs.captured
    assert agree(run(engine, prompts[:3]), expected[:3])  # a smaller bucket
    engine.load_weights(iter_safetensors(other))  # in place: the captured graphs stay valid
    assert graphs.captured and agree(run(engine), expected_other)
    engine.load_weights(iter_safetensors(path))
    engine.release_memory()
    assert not graphs.captured
    engine.resume_memory()
    assert agree(run(engine), expected) and graphs.captured


@pytest.mark.gpu
@gpu
def test_a_model_that_cannot_be_captured_decodes_eagerly_on_cuda(hf):
    """Qwen3-MoE in float32: torch._grouped_mm's CUDA kernel is bf16 only, so the experts run the reference
    dispatch, which reads expert counts on the host: no graphs, HF's greedy tokens (bf16 with graphs:
    test_moe_gpu.py)."""
    from temper.testing.tiny_models import tiny_model_dir

    path = tiny_model_dir("qwen3_moe")
    engine = LLMEngine(EngineArgs(model=str(path), device="cuda", dtype="float32", num_kv_blocks=128, max_model_len=128))
    assert engine.model_runner.graphs is None and "moe" not in engine.model_runner.kernel_groups
    prompts = hf.prompts(4, 3, 30, seed=1)
    greedy = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)
    outputs = [o.output_token_ids for o in engine.generate(prompts, greedy)]
    assert agree(outputs, [hf.greedy(path, p, 8) for p in prompts])


@pytest.mark.gpu
@gpu
def test_a_latent_attention_model_decodes_from_graphs_across_weight_updates_and_release(model_dir, hf):
    """DeepSeek-V3 (bf16: the grouped experts' kernel is bf16 only) decodes from graphs on the latent attention
    kernel (`kernels/latent_attention.py`), which bakes in the cache's address: the graphs stay valid across an
    in-place weight update and are captured again after release/resume moves the KV cache. Each run after
    `load_weights` or resume starts without prefix-cache hits, so the same weights give the same tokens (the
    kernels are deterministic); parity with HF on this path: test_deepseek_v3_gpu.py."""
    from temper.engine.kernels.latent_attention import TritonLatentAttention

    path, other = model_dir("deepseek_v3", seed=0), model_dir("deepseek_v3", seed=1)
    prompts = hf.prompts(20, 3, 60, seed=0)
    greedy = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)

    def run(engine):
        return [o.output_token_ids for o in engine.generate(prompts, greedy)]

    engine = LLMEngine(EngineArgs(model=str(path), device="cuda", dtype="bfloat16", num_kv_blocks=256,
                                  max_model_len=128, max_num_seqs=32))
    graphs = engine.model_runner.graphs
    assert isinstance(engine.model_runner.attention_backend, TritonLatentAttention) and graphs is not None
    first = run(engine)
    assert graphs.captured, "the engine decoded from CUDA graphs"
    engine.load_weights(iter_safetensors(other))
    assert graphs.captured and run(engine) != first
    engine.load_weights(iter_safetensors(path))
    assert run(engine) == first
    engine.release_memory()
    assert not graphs.captured
    engine.resume_memory()
    assert run(engine) == first and graphs.captured
