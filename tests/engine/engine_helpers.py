"""Helpers the engine's HF-parity tests share (a plain module with a name no other test folder uses):
a small engine, the greedy settings and the greedy check against Hugging Face."""

from __future__ import annotations

from temper.engine import EngineArgs, LLMEngine, SamplingParams

NEW_TOKENS = 24
GREEDY = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)


def engine_for(path, **kwargs) -> LLMEngine:
    kwargs.setdefault("num_kv_blocks", 256)
    kwargs.setdefault("max_model_len", 128)
    return LLMEngine(EngineArgs(model=str(path), **kwargs))


def check_greedy(engine, path, prompts, hf):
    outs = engine.generate(prompts, GREEDY)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        assert out.output_token_ids == hf.greedy(path, prompt, NEW_TOKENS), f"prompt {i} (len {len(prompt)})"
        assert out.finish_reason == "length" and len(out.output_logprobs) == NEW_TOKENS
    assert engine.stats()["kv_blocks_used"] == 0 and not engine.has_unfinished_requests()
    return outs
