"""The engine against Hugging Face on the same weights: greedy continuations and log-probs, the criteria of
the GPU parity tests (`tests/engine/test_gpu_parity.py`) and of the MoE benchmark's parity parts.

bfloat16: token equality is not a usable criterion on a random model. Its next-token distribution over a
real vocabulary is flat: the top two logits are often less than one bf16 step apart, i.e. tied after HF's
bf16 LM head, and the engine's kernels round differently from HF's, so ties break differently and the
continuations then diverge for good. So in bf16, with HF teacher-forced over the engine's own tokens:
every engine token must be HF's argmax up to `BF16_ARGMAX_SLACK` (a real bug, e.g. a wrong RoPE position
or mask, picks tokens whole logits below HF's top one), and the engine's log-probs of its tokens must be
within `BF16_LOGPROB_TOLERANCE` of HF's on average; the share of identical continuations is reported.
"""

from __future__ import annotations

import torch

from temper.testing.tokenizer import TOKENIZER_SIZE

BF16_ARGMAX_SLACK = 0.125  # logits: four bf16 steps at magnitude 4..8
BF16_LOGPROB_TOLERANCE = 0.02  # mean |engine - HF| of the sampled tokens' log-probs


def random_prompts(n: int, seed: int = 0, vocab: int = TOKENIZER_SIZE) -> list[list[int]]:
    """`n` prompts of 8..199 random token ids below `vocab`, seeded."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 200, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def compare_with_hf(hf, engine, prompts: list[list[int]], new_tokens: int) -> dict:
    """Greedy decoding of `engine` (an `LLMEngine`) against HF `generate`, and its log-probs against an HF
    forward teacher-forced over the engine's tokens; `hf` and the engine hold the same weights.

    Returns common_prefix (tokens equal to HF's, per prompt), identical_fraction, worst_argmax_gap (HF's top
    logit minus the engine token's, worst over every position) and logprob_mean_abs_diff (mean over prompts
    of the per-prompt mean |diff|).
    """
    from temper.engine import SamplingParams

    device = next(hf.parameters()).device
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True))
    common, gaps, diffs = [], [], []
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt], device=device)
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        common.append(next((i for i, (a, b) in enumerate(zip(ref, out.output_token_ids)) if a != b), new_tokens))
        logits = hf(torch.tensor([prompt + out.output_token_ids], device=device)).logits[0].float()
        logits = logits[len(prompt) - 1 : -1]
        chosen = torch.tensor(out.output_token_ids, device=device)
        gaps.append((logits.max(-1).values - logits.gather(1, chosen[:, None])[:, 0]).max().item())
        hf_logprobs = torch.log_softmax(logits, -1).gather(1, chosen[:, None])[:, 0]
        diffs.append((hf_logprobs - torch.tensor(out.output_logprobs, device=device)).abs().mean().item())
    return {
        "common_prefix": common,
        "identical_fraction": sum(c == new_tokens for c in common) / len(prompts),
        "worst_argmax_gap": max(gaps),
        "logprob_mean_abs_diff": sum(diffs) / len(diffs),
    }


def passes_bf16(report: dict) -> bool:
    """The bf16 criteria (module docstring) on a `compare_with_hf` report."""
    return (report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK
            and report["logprob_mean_abs_diff"] <= BF16_LOGPROB_TOLERANCE)
