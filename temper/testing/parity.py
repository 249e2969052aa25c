"""The engine against Hugging Face on the same weights: greedy continuations and log-probs, the criteria of
the GPU parity tests (`tests/engine/test_gpu_parity.py`) and of the MoE benchmark's parity parts.

bfloat16: token equality is not a usable criterion on a random model. Its next-token distribution over a
real vocabulary is flat: the top two logits are often less than one bf16 step apart, i.e. tied after HF's
bf16 LM head, and the engine's kernels round differently from HF's, so ties break differently and the
continuations then diverge for good. So in bf16, with HF teacher-forced over the engine's own tokens:
every engine token must be HF's argmax up to `BF16_ARGMAX_SLACK` (a real bug, e.g. a wrong RoPE position
or mask, picks tokens whole logits below HF's top one), and the engine's log-probs of its tokens must be
within `BF16_LOGPROB_TOLERANCE` of HF's on average; the share of identical continuations is reported. A
mixture of experts is held to these with HF routing each token as the engine did (`compare_with_hf`).
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

    A mixture of experts: in bf16 a token whose router scores are near a top-k tie goes to other experts in the
    engine than in HF whenever their hidden states differ in the last bit, and that token's output then differs
    by far more than rounding (Moonlight's widths, 3 layers, CPU: 5-12 of ~75 token-layers a prompt flipped).
    So the teacher-forced forward routes every token as the engine did (rollout routing replay,
    `moe_routing.RouterHooks.use_routing`), which compares the engine's arithmetic; logprob_mean_abs_diff_free
    is HF routing its own way, for the record.
    """
    from temper.engine import SamplingParams

    device = next(hf.parameters()).device
    moe = engine.model_runner.routed_experts is not None
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    outs = _generate(engine, prompts, params, routed=moe)
    hooks = _router_hooks(hf) if moe else None
    common, gaps, diffs, free = [], [], [], []
    try:
        for prompt, out in zip(prompts, outs):
            ids = torch.tensor([prompt], device=device)
            if hooks is not None:
                hooks.use_routing(None)
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
            common.append(next((i for i, (a, b) in enumerate(zip(ref, out.output_token_ids)) if a != b), new_tokens))
            tokens = torch.tensor([prompt + out.output_token_ids], device=device)
            chosen = torch.tensor(out.output_token_ids, device=device)
            engine_logprobs = torch.tensor(out.output_logprobs, device=device)
            if hooks is not None:
                free.append(_logprob_diff(hf(tokens).logits[0], len(prompt), chosen, engine_logprobs))
                hooks.use_routing(_engine_routing(out, device))
            full = hf(tokens).logits[0]
            logits = full.float()[len(prompt) - 1 : -1]
            gaps.append((logits.max(-1).values - logits.gather(1, chosen[:, None])[:, 0]).max().item())
            diffs.append(_logprob_diff(full, len(prompt), chosen, engine_logprobs))
    finally:
        if hooks is not None:
            hooks.close()
    report = {
        "common_prefix": common,
        "identical_fraction": sum(c == new_tokens for c in common) / len(prompts),
        "worst_argmax_gap": max(gaps),
        "logprob_mean_abs_diff": sum(diffs) / len(diffs),
    }
    if moe:
        report["logprob_mean_abs_diff_free"] = sum(free) / len(free)
    return report


def _generate(engine, prompts: list[list[int]], params, *, routed: bool) -> list:
    """The engine's outputs in prompt order, with each token's routed experts when `routed`."""
    if not routed:
        return engine.generate(prompts, params)
    ids = [engine.add_request(p, params, return_routed_experts=True) for p in prompts]
    final = {}
    while engine.has_unfinished_requests():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    return [final[i] for i in ids]


def _router_hooks(hf):
    from temper.train.moe_routing import RouterHooks

    return RouterHooks(hf, why="the parity check's routing replay")


def _engine_routing(out, device) -> torch.Tensor:
    """The engine's expert ids [tokens, layers, top_k] for every token of prompt + output (the last sampled
    token, which the engine never ran, routes freely: row -1)."""
    routed = torch.as_tensor(out.routed_experts, dtype=torch.int64)
    free_row = torch.full_like(routed[:1], -1)
    return torch.cat((routed, free_row)).to(device)


def _logprob_diff(logits: torch.Tensor, prompt_len: int, chosen: torch.Tensor, engine_logprobs: torch.Tensor) -> float:
    """Mean |HF - engine| log-prob of the engine's tokens `chosen`; `logits`: HF's over prompt + output."""
    hf_logprobs = torch.log_softmax(logits.float()[prompt_len - 1 : -1], -1).gather(1, chosen[:, None])[:, 0]
    return (hf_logprobs - engine_logprobs).abs().mean().item()


def passes_bf16(report: dict) -> bool:
    """The bf16 criteria (module docstring) on a `compare_with_hf` report."""
    return (report["worst_argmax_gap"] <= BF16_ARGMAX_SLACK
            and report["logprob_mean_abs_diff"] <= BF16_LOGPROB_TOLERANCE)
