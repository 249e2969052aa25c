"""The whole engine on the Triton kernels (CPU: through the interpreter) vs Hugging Face, and the
start-up self-check that decides which kernel groups an engine uses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from temper.engine import EngineArgs, LLMEngine, SamplingParams, kernels
from temper.engine.kernels.self_check import passing_groups


@pytest.mark.slow
def test_engine_on_triton_kernels_matches_hf(model_dir, hf, device):
    path = model_dir("qwen3")
    # Short prompts: the interpreter runs every program of every kernel in Python.
    base = hf.prompts(1, 17, 17, seed=0)[0]
    prompts = [hf.prompts(1, 5, 5, seed=1)[0], base, base + [5, 6, 7]]  # the last hits the prefix cache
    engine = LLMEngine(EngineArgs(model=str(path), device=device, num_kv_blocks=64, max_model_len=128,
                                  kernels="triton", dtype="float32"))
    assert engine.model_runner.kernel_groups == {"layers", "attention", "sampler"}
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    assert outs[2].cached_tokens == 16
    for prompt, out in zip(prompts, outs):
        assert out.output_token_ids == hf.greedy(path, prompt, 5)
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), 0.0)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4
    sampled = engine.generate(prompts[:1], SamplingParams(temperature=0.8, max_new_tokens=3, ignore_eos=True, seed=3))
    for prompt, out in zip(prompts[:1], sampled):
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), 0.8)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_check_passes_every_group(dtype, device):
    shape = SimpleNamespace(num_heads=4, num_kv_heads=2, head_dim=32, hidden_size=64, intermediate_size=96,
                            block_size=16, vocab_size=1024, qk_norm=True, experts=(8, 64, 32, 2))
    # torch._grouped_mm: a CUDA kernel for bf16 only; on CPU where this PyTorch implements it
    grouped = kernels.grouped_mm_runs_on_cpu() if device == "cpu" else dtype == torch.bfloat16
    expected = set(kernels.GROUPS) if grouped else set(kernels.GROUPS) - {"moe"}
    assert passing_groups(torch.device(device), dtype, shape) == expected
    shape.experts = None  # a dense model: the experts' groups are not checked
    assert passing_groups(torch.device(device), dtype, shape) == set(kernels.GROUPS) - set(kernels.MOE_GROUPS)


def test_self_check_leaves_out_a_group_that_disagrees(device, monkeypatch):
    from temper.engine.kernels import elementwise

    monkeypatch.setattr(elementwise, "silu_and_mul", lambda x: torch.zeros_like(x[:, : x.shape[1] // 2]))
    shape = SimpleNamespace(num_heads=2, num_kv_heads=1, head_dim=32, hidden_size=32, intermediate_size=32,
                            block_size=16, vocab_size=64, qk_norm=False)
    assert passing_groups(torch.device(device), torch.float32, shape) == {"attention", "sampler"}


@pytest.mark.slow
def test_decode_graph_inputs_replay_like_eager(model_dir, hf, device):
    """The CUDA-graph path with the capture replaced by plain calls: the graph forward reads the fixed
    views that each step's inputs are copied into, over padded buckets, with overlapped scheduling
    (pending input ids copied on the device), as on a GPU (CPU: interpreter)."""
    from temper.engine.cuda_graph import DecodeGraphs

    path = model_dir("qwen3")
    prompts = hf.prompts(3, 3, 12, seed=4)
    kwargs = {"device": device, "num_kv_blocks": 64, "max_model_len": 64, "max_num_seqs": 4, "kernels": "triton",
              "dtype": "float32", "cuda_graphs": False, "overlap_scheduling": True}
    engine = LLMEngine(EngineArgs(model=str(path), **kwargs))
    graphs = DecodeGraphs(engine.model_runner, max_batch=4)
    graphs._capture_one = lambda forward: forward  # replay = run the captured function again
    engine.model_runner.graphs = graphs
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
    assert graphs.captured and sorted(graphs.graphs) == [1, 2, 4]
    for prompt, out in zip(prompts, outs):  # 3 sequences ran in the bucket of 4: one padding row
        assert out.output_token_ids == hf.greedy(path, prompt, 4)
    engine.release_memory(["kv_cache"])
    assert not graphs.captured
