"""The grouped-GEMM experts (`moe.dispatch_grouped`, kernel group "moe") on CUDA (GPU only): against the
per-expert loop in bf16 at Qwen3-30B-A3B's and Moonlight-16B-A3B's expert shapes, eagerly and replayed
from a CUDA graph; the start-up self-check; and the tiny Qwen3-MoE, DeepSeek-V3 and GLM-4.5 engines on the
grouped path against Hugging Face (each decoding from CUDA graphs; DeepSeek-V3 on the latent attention kernel), with
`test_gpu_parity.py`'s bf16 criteria; the routed experts
(R3) recorded from the CUDA graphs."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_gpu_parity import BF16_ARGMAX_SLACK, parity_report

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.kernels.self_check import passing_groups
from temper.engine.models.moe import dispatch_grouped, dispatch_loop

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# (experts, hidden, expert intermediate size, top-k, routing weights' dtype)
SHAPES = {
    "qwen3-30b-a3b": (128, 2048, 768, 8, torch.bfloat16),
    "moonlight-16b-a3b": (64, 2048, 1408, 6, torch.float32),  # DeepSeek's sigmoid weights stay float32
}


def random_experts(shape: str, tokens: int, seed: int = 0):
    num_experts, hidden, size, top_k, weight_dtype = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*dims, scale=1.0):
        return (scale * torch.randn(*dims, generator=g, device="cuda")).bfloat16()

    w_gate_up, w_down = randn(num_experts, 2 * size, hidden, scale=hidden**-0.5), randn(num_experts, hidden, size,
                                                                                          scale=size**-0.5)
    x = randn(tokens, hidden)
    scores = torch.rand(tokens, num_experts, generator=g, device="cuda")
    scores[:, :3] = -1.0  # three experts get no token
    weights, ids = scores.topk(top_k, dim=-1)
    return w_gate_up, w_down, x, weights.to(weight_dtype), ids


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("tokens", [1, 7, 256, 4096])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_grouped_equals_the_loop_in_bf16(shape, tokens):
    w_gate_up, w_down, x, weights, ids = random_experts(shape, tokens)
    out = dispatch_grouped(w_gate_up, w_down, x, weights, ids)
    ref = dispatch_loop(w_gate_up, w_down, x, weights, ids)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert relative_error(out, ref) < 1e-2


@pytest.mark.parametrize("shape", list(SHAPES))
def test_grouped_replays_from_a_cuda_graph_with_new_routing(shape):
    static = list(random_experts(shape, 64, seed=1))
    dispatch_grouped(*static)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dispatch_grouped(*static)
    for _ in range(2):  # other tokens, other experts, other group sizes: the offsets live on the device
        for buffer, new in zip(static[2:], random_experts(shape, 64, seed=2 + _)[2:]):
            buffer.copy_(new)
        graph.replay()
        assert relative_error(out, dispatch_loop(*static)) < 1e-2


def test_self_check_keeps_the_grouped_experts_in_bf16():
    shape = SimpleNamespace(num_heads=4, num_kv_heads=2, head_dim=64, hidden_size=2048, intermediate_size=6144,
                            block_size=16, vocab_size=1024, qk_norm=True, experts=(128, 2048, 768, 8))
    assert "moe" in passing_groups(torch.device("cuda"), torch.bfloat16, shape, {"moe"})


def _engine_kwargs() -> dict:
    return {"device": "cuda", "num_kv_blocks": 256, "max_model_len": 160, "max_num_seqs": 16}


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3", "glm4_moe"])
def test_tiny_engine_on_the_grouped_path_matches_hf_in_bf16(arch, model_dir, hf):
    path = model_dir(arch)
    prompts = hf.prompts(12, 3, 80, seed=5)
    greedy = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    engine = LLMEngine(EngineArgs(model=str(path), dtype="bfloat16", **_engine_kwargs()))
    runner = engine.model_runner
    assert "moe" in runner.kernel_groups
    assert runner.graphs is not None  # DeepSeek-V3: on the latent attention kernel
    engine.generate(prompts, greedy)
    assert runner.graphs.captured
    del engine, runner
    eager = LLMEngine(EngineArgs(model=str(path), dtype="bfloat16", kernels="torch", **_engine_kwargs()))
    assert eager.model_runner.graphs is None and not eager.model_runner.kernel_groups
    del eager
    gc.collect()
    torch.cuda.empty_cache()
    # Each path against HF with the dense path's bf16 criteria. Greedy continuations of a tiny random model are
    # not compared token for token between the paths: near-ties flip under either path's roundings (7 of 12
    # continuations of 24 tokens agreed on an H100), and a flip says nothing about which path is right.
    kwargs = {k: v for k, v in _engine_kwargs().items() if k != "device"}
    for kernels in ("auto", "torch"):
        report = parity_report(path, "cuda", torch.bfloat16, prompts, 24, kernels=kernels, **kwargs)
        print(kernels, report)
        assert report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK, (kernels, report)
        assert report["logprob_mean_abs_diff"] <= 0.02, (kernels, report)


def test_routed_experts_are_recorded_from_the_cuda_graphs(model_dir, hf):
    """R3 on the fast path: decode steps replayed from CUDA graphs (padded buckets) record each token's
    experts; they are valid top-k sets and agree with the reference path's (bf16 ties aside)."""
    path = model_dir("qwen3_moe")
    prompts = hf.prompts(3, 5, 40, seed=7)  # 3 sequences decode in the bucket of 4: one padding row
    greedy = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)

    def routed(engine):
        ids = [engine.add_request(p, greedy, return_routed_experts=True) for p in prompts]
        final = {}
        while engine.has_unfinished_requests():
            final.update((o.request_id, o) for o in engine.step() if o.finished)
        return [final[i] for i in ids]

    fast = LLMEngine(EngineArgs(model=str(path), dtype="bfloat16", **_engine_kwargs()))
    assert fast.model_runner.graphs is not None
    outs = routed(fast)
    assert fast.model_runner.graphs.captured
    del fast
    eager = LLMEngine(EngineArgs(model=str(path), dtype="bfloat16", kernels="torch", **_engine_kwargs()))
    reference = routed(eager)
    del eager
    gc.collect()
    torch.cuda.empty_cache()
    config = hf.model(path).config
    agreeing = total = 0
    for out, ref in zip(outs, reference):
        r = out.routed_experts
        assert r.shape == (len(out.prompt_token_ids) + len(out.output_token_ids) - 1, config.num_hidden_layers,
                           config.num_experts_per_tok)
        assert ((r >= 0) & (r < config.num_experts)).all()
        assert (np.diff(np.sort(r, axis=-1), axis=-1) > 0).all()  # distinct experts per token and layer
        if out.output_token_ids == ref.output_token_ids:
            same = (np.sort(r, axis=-1) == np.sort(ref.routed_experts, axis=-1)).all(-1)
            agreeing, total = agreeing + int(same.sum()), total + same.size
    assert total and agreeing >= 0.9 * total
