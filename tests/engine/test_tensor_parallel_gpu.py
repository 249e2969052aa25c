"""Tensor parallelism on two GPUs (NCCL, CUDA graphs), on a random model of Qwen3-4B's shape in bf16.

The criteria are test_gpu_parity.py's bfloat16 ones, for the same reasons (a random model's flat
next-token distribution makes bf16 ties common, and TP's split GEMMs round differently again):
1. sampled sequences: the engine's log-probs of its own tokens are within 0.02 of a Hugging Face
   forward over the same tokens, on average;
2. greedy: every engine token is HF's argmax up to `BF16_ARGMAX_SLACK`, teacher-forced over the
   engine's continuation (a wrong shard, a missing all-reduce or a bad gather picks tokens whole
   logits below HF's top one).
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.testing.tiny_models import build_tiny_model
from temper.testing.tokenizer import TOKENIZER_SIZE

NUM_PROMPTS, NEW_TOKENS = 6, 32
BF16_ARGMAX_SLACK = 0.125  # logits: four bf16 steps at magnitude 4..8
QWEN3_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_layers": 36, "num_heads": 32, "num_kv_heads": 8}

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]


@pytest.fixture(scope="module")
def qwen3_4b(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("qwen3-4b"), "qwen3", preset="qwen3-0.6b", dtype=torch.bfloat16,
                            **QWEN3_4B)


def random_prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 200, (n,), generator=g).tolist()
    return [torch.randint(0, TOKENIZER_SIZE, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def hf_scores(hf, prompt: list[int], output: list[int], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax(logits / T) of `output`'s tokens, HF's top logit minus the chosen token's) per token."""
    logits = hf(torch.tensor([prompt + output], device="cuda:0")).logits[0].float()[len(prompt) - 1 : -1]
    chosen = torch.tensor(output, device="cuda:0")[:, None]
    gaps = logits.max(-1).values - logits.gather(1, chosen)[:, 0]
    logprobs = torch.log_softmax(logits / (temperature or 1.0), -1).gather(1, chosen)[:, 0]
    return logprobs, gaps


@torch.no_grad()
def test_tp2_bf16_matches_hf_on_two_gpus(qwen3_4b):
    hf = AutoModelForCausalLM.from_pretrained(qwen3_4b, dtype=torch.bfloat16).to("cuda:0").eval()
    engine = LLMEngine(EngineArgs(model=str(qwen3_4b), device="cuda:0", dtype="bfloat16", tensor_parallel_size=2,
                                  mem_fraction_static=0.6, max_model_len=1024))
    try:
        prompts = random_prompts(NUM_PROMPTS)
        sampled = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, ignore_eos=True, seed=7)
        diffs = []
        for prompt, out in zip(prompts, engine.generate(prompts, sampled)):
            logprobs, _ = hf_scores(hf, prompt, out.output_token_ids, 1.0)
            engine_logprobs = torch.tensor(out.output_logprobs, device="cuda:0")
            diffs.append((logprobs - engine_logprobs).abs().mean().item())
        gaps = []
        greedy = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        for prompt, out in zip(prompts, engine.generate(prompts, greedy)):
            gaps.append(hf_scores(hf, prompt, out.output_token_ids, 0.0)[1].max().item())
        report = {"logprob_mean_abs_diff": sum(diffs) / len(diffs), "worst_argmax_gap": max(gaps),
                  "graphs": engine.model_runner.graphs is not None and engine.model_runner.graphs.captured}
        print(report)
        assert report["logprob_mean_abs_diff"] <= 0.02, report
        assert report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK, report
    finally:
        engine.close()
        del engine, hf
        gc.collect()
        torch.cuda.empty_cache()
