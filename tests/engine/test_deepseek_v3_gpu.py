"""DeepSeek-V3 on CUDA against Hugging Face (GPU only), on a random model of Moonlight-16B-A3B's shape cut
to 3 layers (one dense, two with 64 experts): the latent attention and the experts run their PyTorch
reference on the GPU (the reference attention backend, no decode CUDA graphs), with the same criteria as
`test_gpu_parity.py`'s for the dense path."""

from __future__ import annotations

import gc

import pytest
import torch
from test_gpu_parity import BF16_ARGMAX_SLACK, NEW_TOKENS, NUM_PROMPTS, parity_report, random_prompts

from temper.engine import EngineArgs, LLMEngine
from temper.engine.attention import TorchPagedAttention
from temper.testing.tiny_models import build_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


# The engine sizes its KV cache from what its warm-up leaves free; the reference latent attention's prefill of an
# 8k-token batch (the default) over a 164k vocabulary takes tens of GiB, and the HF model of the same test sits beside it
# (the default batch left no room on an 80 GB H100 in fp32). The prompts here are under 240 tokens.
SMALL_ENGINE = {"mem_fraction_static": 0.5, "max_model_len": 512, "max_num_batched_tokens": 2048}


@pytest.fixture(scope="module")
def moonlight_3_layers(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("moonlight"), "deepseek_v3", preset="moonlight-16b-a3b",
                            num_layers=3, dtype=torch.bfloat16)


def test_reference_paths_on_cuda(moonlight_3_layers):
    engine = LLMEngine(EngineArgs(model=str(moonlight_3_layers), device="cuda", mem_fraction_static=0.5))
    runner = engine.model_runner
    assert isinstance(runner.attention_backend, TorchPagedAttention) and runner.graphs is None
    assert tuple(runner.kv_cache.shape[:2]) == (1, 3) and tuple(runner.kv_cache.shape[-2:]) == (1, 512 + 64)
    del engine, runner  # free the KV cache before the next test sizes its own
    gc.collect()
    torch.cuda.empty_cache()


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
