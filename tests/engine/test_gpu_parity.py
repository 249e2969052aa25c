"""Parity with Hugging Face on CUDA, on a random model of Qwen3-0.6B's shape (GPU only).

float32: greedy continuations must equal HF `generate` token for token (>= 90% of prompts over 32
tokens; fp32 rounding almost never flips an argmax), and log-probs must agree to 1e-3.

bfloat16: token equality is not a usable criterion on a random model. Its next-token distribution
over 151936 tokens is flat: the top two logits are often less than one bf16 step apart (1/32 at the
logit magnitudes here), i.e. exactly tied after HF's bf16 LM head, and the engine's kernels (fused
q/k/v and gate/up GEMMs, paged attention) round differently from HF's, so ties break differently and
the continuations then diverge for good. Measured on CPU (bf16, this model, 8 prompts): 4 of 8
prompts identical over 32 tokens, every divergence at a gap of exactly one bf16 step, log-prob mean
|diff| 0.006. So the bf16 test checks, with HF teacher-forced over the engine's own tokens:
1. every engine token is HF's argmax up to `BF16_ARGMAX_SLACK` (a real bug, e.g. a wrong RoPE
   position or mask, picks tokens whole logits below HF's top one);
2. the engine's log-probs of its tokens are within 0.02 of HF's on average;
and reports (without asserting) the share of identical 32-token continuations.
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.testing.tiny_models import build_tiny_model
from temper.testing.tokenizer import TOKENIZER_SIZE

NUM_PROMPTS, NEW_TOKENS = 10, 32
BF16_ARGMAX_SLACK = 0.125  # logits: four bf16 steps at magnitude 4..8

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def qwen3_06b(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("qwen3-0.6b"), "qwen3", preset="qwen3-0.6b",
                            dtype=torch.bfloat16)


def random_prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 200, (n,), generator=g).tolist()
    return [torch.randint(0, TOKENIZER_SIZE, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def parity_report(path, device: str, dtype: torch.dtype, prompts: list[list[int]], new_tokens: int,
                  **engine_kwargs) -> dict:
    """Greedy + log-prob comparison of LLMEngine vs HF generate / forward, both in `dtype`."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    engine = LLMEngine(EngineArgs(model=str(path), device=device, dtype=str(dtype).removeprefix("torch."),
                                  **engine_kwargs))
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True))
    common, gaps, diffs = [], [], []
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt], device=device)
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        common.append(next((i for i, (a, b) in enumerate(zip(ref, out.output_token_ids)) if a != b), new_tokens))
        # Teacher-forced: HF's logits at every position of the engine's own continuation.
        logits = hf(torch.tensor([prompt + out.output_token_ids], device=device)).logits[0].float()
        logits = logits[len(prompt) - 1 : -1]
        chosen = torch.tensor(out.output_token_ids, device=device)
        gaps.append((logits.max(-1).values - logits.gather(1, chosen[:, None])[:, 0]).max().item())
        hf_logprobs = torch.log_softmax(logits, -1).gather(1, chosen[:, None])[:, 0]
        diffs.append((hf_logprobs - torch.tensor(out.output_logprobs, device=device)).abs().mean().item())
    del engine, hf  # free the KV cache before the next test sizes its own
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "common_prefix": common,
        "identical_fraction": sum(c == new_tokens for c in common) / len(prompts),
        "worst_argmax_gap": max(gaps),
        "logprob_mean_abs_diff": sum(diffs) / len(diffs),
    }


def test_fp32_greedy_and_logprobs_match_hf_on_cuda(qwen3_06b):
    report = parity_report(qwen3_06b, "cuda", torch.float32, random_prompts(NUM_PROMPTS), NEW_TOKENS,
                           mem_fraction_static=0.6)
    print(report)
    assert report["identical_fraction"] >= 0.9, report
    assert report["logprob_mean_abs_diff"] <= 1e-3, report


def test_bf16_greedy_and_logprobs_match_hf_on_cuda(qwen3_06b):
    report = parity_report(qwen3_06b, "cuda", torch.bfloat16, random_prompts(NUM_PROMPTS), NEW_TOKENS,
                           mem_fraction_static=0.6)
    print(report)
    assert report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK, report
    assert report["logprob_mean_abs_diff"] <= 0.02, report
