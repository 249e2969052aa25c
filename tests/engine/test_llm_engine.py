"""LLMEngine end to end on tiny models: HF parity (greedy tokens, log-probs), prefix caching,
preemption, seeds, abort, weight updates, memory release, request validation."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import GREEDY, NEW_TOKENS, check_greedy, check_prefix_cache_hits, engine_for

from temper.engine import SamplingParams
from temper.engine.weights import iter_safetensors

ARCHS = ["qwen3", "qwen2", "llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_hf(arch, model_dir, hf, prompts):
    path = model_dir(arch)
    engine = engine_for(path, enable_prefix_caching=False)
    check_greedy(engine, path, prompts, hf)
    assert engine.stats()["prefill_tokens_computed"] == sum(map(len, prompts))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_prefix_cache_hits_matches_hf(arch, model_dir, hf, prompts):
    path = model_dir(arch)
    engine = engine_for(path)
    check_prefix_cache_hits(engine, check_greedy(engine, path, prompts, hf), prompts)
    # A second wave hits the blocks the first one freed.
    outs = check_greedy(engine, path, prompts[:16], hf)
    assert all(o.cached_tokens == (len(p) - 1) // 16 * 16 for o, p in zip(outs, prompts))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_under_preemption_matches_hf(arch, model_dir, hf, prompts):
    path = model_dir(arch)
    # max_model_len 96 needs 6 blocks of 16; 8 blocks hold one long sequence and a bit more.
    engine = engine_for(path, num_kv_blocks=8, max_model_len=96)
    check_greedy(engine, path, prompts, hf)
    assert engine.stats()["num_preemptions"] > 0


def test_chunked_prefill_matches_hf(model_dir, hf, prompts):
    path = model_dir("qwen3")
    engine = engine_for(path, max_num_batched_tokens=23)
    check_greedy(engine, path, prompts[:20], hf)


def test_max_num_seqs_one(model_dir, hf, prompts):
    path = model_dir("qwen2")
    check_greedy(engine_for(path, max_num_seqs=1, block_size=8), path, prompts[:4], hf)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_hf_forward(temperature, model_dir, hf, prompts):
    path = model_dir("qwen3")
    engine = engine_for(path)
    params = SamplingParams(temperature=temperature, max_new_tokens=16, ignore_eos=True, seed=11)
    outs = engine.generate(prompts[:8], params)
    for prompt, out in zip(prompts[:8], outs):
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), temperature)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4


def test_top_p_does_not_renormalize_logprobs(model_dir, hf, prompts):
    path = model_dir("llama")
    params = SamplingParams(temperature=0.8, top_p=0.5, top_k=20, max_new_tokens=8, ignore_eos=True, seed=3)
    out = engine_for(path).generate([prompts[0]], params)[0]
    expected = hf.logprobs(path, prompts[0] + out.output_token_ids, len(prompts[0]), 0.8)
    assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4


def test_seeded_request_is_reproducible_across_batches_and_engines(model_dir, prompts):
    path = model_dir("qwen3")
    params = SamplingParams(temperature=1.0, max_new_tokens=16, ignore_eos=True, seed=1234)
    alone = engine_for(path).generate([prompts[5]], params)[0].output_token_ids
    others = SamplingParams(temperature=0.9, top_k=50, max_new_tokens=20, ignore_eos=True)
    batch = engine_for(path, seed=7, num_kv_blocks=8, max_model_len=96).generate(
        prompts[:5] + [prompts[5]] + prompts[6:12], [others] * 5 + [params] + [others] * 6
    )
    assert batch[5].output_token_ids == alone
    other_seed = SamplingParams(temperature=1.0, max_new_tokens=16, ignore_eos=True, seed=1235)
    assert engine_for(path).generate([prompts[5]], other_seed)[0].output_token_ids != alone


def test_unseeded_requests_follow_the_engine_seed(model_dir, prompts):
    path = model_dir("qwen3")
    params = SamplingParams(temperature=1.0, max_new_tokens=12, ignore_eos=True)
    run = lambda seed: [o.output_token_ids for o in engine_for(path, seed=seed).generate(prompts[:4], params)]
    assert run(0) == run(0) != run(1)


def test_generate_n_expands_with_distinct_seeds(model_dir, prompts):
    path = model_dir("qwen3")
    engine = engine_for(path)
    outs = engine.generate(prompts[16:18], SamplingParams(n=3, max_new_tokens=8, ignore_eos=True, seed=5))
    assert len(outs) == 6 and [o.prompt_token_ids for o in outs] == [prompts[16]] * 3 + [prompts[17]] * 3
    assert len({tuple(o.output_token_ids) for o in outs[:3]}) == 3
    assert [o.cached_tokens > 0 for o in outs] == [False, True, True, True, True, True]


def test_step_streams_new_tokens(model_dir, prompts):
    engine = engine_for(model_dir("qwen2"))
    ids = [engine.add_request(p, SamplingParams(max_new_tokens=5, ignore_eos=True)) for p in prompts[:3]]
    streamed = {i: [] for i in ids}
    steps = 0
    while engine.has_unfinished_requests():
        outs = engine.step()
        steps += 1
        assert {o.request_id for o in outs} == set(ids)  # everyone gets a token every step
        for o in outs:
            streamed[o.request_id] += o.new_token_ids
            assert o.output_token_ids == streamed[o.request_id] and o.weight_version == "default"
            assert o.finished == (len(o.output_token_ids) == 5)
    assert steps == 5


def test_non_streaming_requests_report_first_token_version_changes_and_end(model_dir, prompts):
    """stream=False: an output after the first token, one under the old version when the version
    changes (no new tokens), and the final one, which equals a streamed twin's (same seed)."""
    engine = engine_for(model_dir("qwen2"))
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, temperature=1.0, seed=3)
    engine.add_request(prompts[0], params, request_id="loud")
    engine.add_request(prompts[0], params, request_id="quiet", stream=False)
    seen = {"loud": [], "quiet": []}
    steps = 0
    while engine.has_unfinished_requests():
        for o in engine.step():
            seen[o.request_id].append((len(o.output_token_ids), o.weight_version, o.finished, o))
        steps += 1
        if steps == 3:
            engine.weight_version = "v2"
            engine.weight_version = "v2"  # no change: nothing reported
    assert [n for n, *_ in seen["loud"]] == [1, 2, 3, 4, 5, 6]
    quiet = [(n, version, finished) for n, version, finished, _ in seen["quiet"]]
    assert quiet == [(1, "default", False), (3, "default", False), (6, "v2", True)]
    loud, final = seen["loud"][-1][3], seen["quiet"][-1][3]
    assert final.output_token_ids == loud.output_token_ids and final.output_logprobs == loud.output_logprobs
    assert final.text == loud.text and final.text


def test_abort_running_and_waiting(model_dir, prompts):
    engine = engine_for(model_dir("qwen3"), max_num_seqs=2)
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    _a, _b, _c = (engine.add_request(p, params, request_id=r) for p, r in zip(prompts, "abc"))
    engine.step()  # a and b run, c waits
    engine.abort_request("a")
    engine.abort_request("c")
    engine.abort_request("nope")
    outs = {o.request_id: o for o in engine.step()}
    assert outs["a"].finished and outs["a"].finish_reason == "abort" and len(outs["a"].output_token_ids) == 1
    assert outs["c"].finish_reason == "abort" and outs["c"].output_token_ids == []
    assert not outs["b"].finished
    while engine.has_unfinished_requests():
        final = engine.step()
    assert final[0].request_id == "b" and final[0].finish_reason == "length"
    assert engine.stats()["kv_blocks_used"] == 0


def test_load_weights_switches_model_and_flushes_prefix_cache(model_dir, hf, prompts):
    old, new = model_dir("qwen3", seed=0), model_dir("qwen3", seed=1)
    engine = engine_for(old)
    engine.generate(prompts[:4], GREEDY)
    assert engine.generate([prompts[0]], GREEDY)[0].cached_tokens > 0
    engine.load_weights(iter_safetensors(new))
    outs = engine.generate(prompts[:4], GREEDY)
    assert [o.output_token_ids for o in outs] == [hf.greedy(new, p, NEW_TOKENS) for p in prompts[:4]]
    assert all(o.cached_tokens == 0 for o in outs)
    engine.load_weights_from_disk(str(old))
    assert engine.generate([prompts[1]], GREEDY)[0].output_token_ids == hf.greedy(old, prompts[1], NEW_TOKENS)


def test_flush_cache_only_when_idle(model_dir, prompts):
    engine = engine_for(model_dir("qwen3"))
    engine.generate([prompts[0]], GREEDY)
    engine.add_request(prompts[1], GREEDY)
    assert engine.flush_cache() is False
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.flush_cache() is True
    assert engine.generate([prompts[0]], GREEDY)[0].cached_tokens == 0


def test_release_and_resume_memory(model_dir, hf, prompts):
    path = model_dir("llama")
    engine = engine_for(path)
    engine.generate([prompts[0]], GREEDY)
    engine.release_memory(None)
    assert engine.model_runner.kv_cache is None
    engine.add_request(prompts[1], GREEDY)
    with pytest.raises(RuntimeError, match="resume_memory"):
        engine.step()
    engine.abort_request(engine.scheduler.waiting[0].request_id)
    engine.step()
    engine.resume_memory(["weights"])
    engine.resume_memory(["kv_cache"])
    outs = engine.generate(prompts[:3], GREEDY)
    assert [o.output_token_ids for o in outs] == [hf.greedy(path, p, NEW_TOKENS) for p in prompts[:3]]
    assert outs[0].cached_tokens == 0  # the prefix cache went with the KV cache
    with pytest.raises(ValueError, match="memory tag"):
        engine.release_memory(["activations"])


def test_max_new_tokens_zero_and_none(model_dir, prompts):
    engine = engine_for(model_dir("qwen3"), max_model_len=64)
    zero, capped = engine.generate([prompts[0], prompts[1]], [
        SamplingParams(max_new_tokens=0), SamplingParams(max_new_tokens=None, ignore_eos=True)])
    assert zero.output_token_ids == [] and zero.finish_reason == "length"
    assert capped.finish_reason == "length" and len(prompts[1]) + len(capped.output_token_ids) == 64


def test_add_request_validation(model_dir):
    engine = engine_for(model_dir("qwen3"), max_model_len=64)
    ok = SamplingParams()
    cases = [
        ([], ok, "empty"),
        ([1] * 64, ok, r"input \(64 tokens\).*context length \(64 tokens\)"),
        ([1, -1], ok, r"prompt_token_ids\[1\]=-1"),
        ([1, 1024], ok, r"prompt_token_ids\[1\]=1024.*\[0, 1024\)"),
        ([1, "x"], ok, r"prompt_token_ids\[1\]='x'"),
        ([1], SamplingParams(temperature=-1), "temperature"),
        ([1], SamplingParams(top_p=0), "top_p"),
        ([1], SamplingParams(n=2), "n=2"),
    ]
    for prompt, params, message in cases:
        with pytest.raises(ValueError, match=message):
            engine.add_request(prompt, params)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1, 2], []], ok)  # all or nothing
    assert not engine.has_unfinished_requests()
    engine.add_request([1] * 63, ok, request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1], ok, request_id="x")
    assert not engine.stats()["num_running"]


def test_stop_strings_and_stop_token_ids_end_to_end(model_dir, prompts):
    engine = engine_for(model_dir("qwen3"))
    full = engine.generate([prompts[2]], GREEDY)[0]
    stop = full.text[12:16]
    out = engine.generate([prompts[2]], SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, stop=stop))[0]
    assert (out.finish_reason, out.matched_stop) == ("stop", stop)
    assert out.text == full.text[: full.text.find(stop)]
    assert out.output_token_ids == full.output_token_ids[: len(out.output_token_ids)]
    assert stop in engine.tokenizer.decode(out.output_token_ids)
    assert stop not in engine.tokenizer.decode(out.output_token_ids[:-1])

    token = full.output_token_ids[6]
    out = engine.generate([prompts[2]], SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS,
                                                       stop_token_ids=[token]))[0]
    first = full.output_token_ids.index(token)
    assert (out.finish_reason, out.matched_stop) == ("stop", token)
    assert out.output_token_ids == full.output_token_ids[: first + 1]
    assert out.text == engine.tokenizer.decode(full.output_token_ids[:first])


def test_eos_ids_come_from_generation_config(model_dir, prompts, tmp_path):
    import json
    import shutil

    src = model_dir("llama")
    full = engine_for(src).generate([prompts[4]], GREEDY)[0].output_token_ids
    shutil.copytree(src, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    config["eos_token_id"] = [1002, full[5]]
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(config))
    engine = engine_for(tmp_path / "m")
    stopped = engine.generate([prompts[4]], SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))[0]
    assert (stopped.finish_reason, stopped.matched_stop) == ("stop", full[5])
    assert stopped.output_token_ids == full[: full.index(full[5]) + 1]
    assert engine.generate([prompts[4]], GREEDY)[0].output_token_ids == full


def test_bfloat16_on_cpu(model_dir, hf, prompts):
    path = model_dir("qwen2")
    outs = engine_for(path, dtype="bfloat16").generate(prompts[:4], SamplingParams(temperature=0, max_new_tokens=8))
    assert all(len(o.output_token_ids) == 8 for o in outs)
    for prompt, out in zip(prompts[:4], outs):  # bf16 rounding only: log-probs stay close to fp32 HF
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), 0.0)
        assert (torch.tensor(out.output_logprobs) - expected).abs().mean() < 0.05
