"""Overlapped scheduling (the default on CUDA) on CPU: the next batch is launched before the tokens of
the one in flight are read back. Results must equal the plain loop's: same greedy tokens as HF under
prefix caching, preemption and chunked prefill, same seeded samples, stop conditions that end a
sequence one step behind its token, aborts and weight updates while a batch is in flight."""

from __future__ import annotations

import pytest
import torch

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.weights import iter_safetensors

NEW_TOKENS = 16
GREEDY = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)


def engine_for(path, overlap=True, **kwargs) -> LLMEngine:
    kwargs.setdefault("num_kv_blocks", 256)
    kwargs.setdefault("max_model_len", 128)
    return LLMEngine(EngineArgs(model=str(path), overlap_scheduling=overlap, **kwargs))


@pytest.fixture(scope="module")
def prompts(hf):
    mixed = hf.prompts(12, 3, 60, seed=0)
    prefix = hf.prompts(1, 40, 40, seed=1)[0]
    return mixed + [prefix + s for s in hf.prompts(4, 1, 20, seed=2)] + [mixed[3]] * 3


@pytest.mark.parametrize("kwargs", [{}, {"num_kv_blocks": 8, "max_model_len": 96}, {"max_num_batched_tokens": 23},
                                    {"enable_prefix_caching": False, "max_num_seqs": 3}],
                         ids=["prefix-cache", "preemption", "chunked", "few-seqs"])
def test_greedy_matches_hf(kwargs, model_dir, hf, prompts):
    path = model_dir("qwen3")
    engine = engine_for(path, **kwargs)
    outs = engine.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        assert out.output_token_ids == hf.greedy(path, prompt, NEW_TOKENS)
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), 0.0)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4
    assert engine.stats()["kv_blocks_used"] == 0 and not engine.has_unfinished_requests()
    if "num_kv_blocks" in kwargs:
        assert engine.stats()["num_preemptions"] > 0
    assert engine.stats()["generated_tokens"] == NEW_TOKENS * len(prompts)


def test_seeded_samples_equal_the_plain_loop(model_dir, prompts):
    path = model_dir("qwen3")
    params = [SamplingParams(temperature=0.9, top_p=0.95 if i % 2 else 1.0, max_new_tokens=10 + i % 5,
                             ignore_eos=True, seed=i) for i in range(len(prompts))]
    plain = engine_for(path, overlap=False).generate(prompts, params)
    overlapped = engine_for(path, num_kv_blocks=12, max_model_len=96).generate(prompts, params)
    assert [o.output_token_ids for o in overlapped] == [o.output_token_ids for o in plain]
    flat = lambda outs: [x for o in outs for x in o.output_logprobs]
    assert flat(overlapped) == pytest.approx(flat(plain), abs=1e-5)


def test_stop_token_and_string_end_sequences_one_step_late_without_extra_tokens(model_dir, prompts):
    path = model_dir("qwen3")
    plain = engine_for(path, overlap=False)
    full = plain.generate(prompts[:4], GREEDY)
    params = [SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, stop_token_ids=[full[0].output_token_ids[5]]),
              SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, stop=full[1].text[8:12]),
              SamplingParams(temperature=0, max_new_tokens=3), GREEDY]
    expected = plain.generate(prompts[:4], params)
    engine = engine_for(path)
    outs = engine.generate(prompts[:4], params)
    for out, ref in zip(outs, expected):
        assert (out.output_token_ids, out.text, out.finish_reason, out.matched_stop) == (
            ref.output_token_ids, ref.text, ref.finish_reason, ref.matched_stop)
    assert engine.stats()["kv_blocks_used"] == 0


def test_streaming_lags_one_step_and_delivers_every_token(model_dir, prompts):
    engine = engine_for(model_dir("qwen2"))
    ids = [engine.add_request(p, SamplingParams(max_new_tokens=5, ignore_eos=True)) for p in prompts[:3]]
    streamed = {i: [] for i in ids}
    first = engine.step()
    assert first == []  # the prefill is in flight
    steps = 1
    while engine.has_unfinished_requests():
        for o in engine.step():
            streamed[o.request_id] += o.new_token_ids
            assert o.output_token_ids == streamed[o.request_id]
        steps += 1
    assert all(len(v) == 5 for v in streamed.values()) and steps == 6


def test_abort_and_weight_update_with_a_batch_in_flight(model_dir, hf, prompts):
    old, new = model_dir("qwen3", seed=0), model_dir("qwen3", seed=1)
    engine = engine_for(old)
    a = engine.add_request(prompts[0], GREEDY)
    b = engine.add_request(prompts[1], GREEDY)
    engine.step()
    engine.step()  # a decode step is in flight now
    engine.abort_request(a)
    engine.load_weights(iter_safetensors(new))  # waits for the batch in flight, holds its outputs
    outs = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
    assert outs[a][-1].finish_reason == "abort"
    final = outs[b][-1]
    assert final.finished and len(final.output_token_ids) == NEW_TOKENS
    assert sum(len(o.new_token_ids) for o in outs[b]) == NEW_TOKENS - 1  # one came out before the update
    engine.load_weights(iter_safetensors(old))
    engine.release_memory()
    engine.resume_memory()
    assert engine.generate([prompts[2]], GREEDY)[0].output_token_ids == hf.greedy(old, prompts[2], NEW_TOKENS)
