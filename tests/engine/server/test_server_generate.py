"""``/generate``: greedy parity with Hugging Face, batches, ``n``, streaming, logprobs, stops, rids."""

from __future__ import annotations

import itertools
import math

import pytest
from server_helpers import greedy, sse_events

PROMPTS = [[11, 22, 33, 44, 55], [7] * 3 + [500, 600, 700, 800, 900, 17], [999, 1, 42]]


def test_greedy_input_ids_match_hf(client, model_dir, hf):
    path = model_dir("qwen3", seed=0)
    for prompt in PROMPTS:
        r = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(12)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["output_ids"] == hf.greedy(path, prompt, 12)
        meta = body["meta_info"]
        assert meta["prompt_tokens"] == len(prompt) and meta["completion_tokens"] == 12
        assert meta["finish_reason"] == {"type": "length", "length": 12}
        assert meta["weight_version"] == "default" and meta["e2e_latency"] > 0


def test_greedy_text_and_batch_match_hf(client, served, model_dir, hf):
    path = model_dir("qwen3", seed=0)
    tokenizer = served.state.engine.tokenizer
    texts = ["The quick brown fox", "Let's think step by step."]
    r = client.post("/generate", json={"text": texts, "sampling_params": greedy(10)})
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and len(results) == 2
    for text, result in zip(texts, results):
        ids = tokenizer.encode(text)
        assert result["output_ids"] == hf.greedy(path, ids, 10)
        assert result["text"] == tokenizer.decode(result["output_ids"])
    r = client.post("/generate", json={"input_ids": PROMPTS, "sampling_params": [greedy(4), greedy(6), greedy(8)]})
    assert [len(x["output_ids"]) for x in r.json()] == [4, 6, 8]
    assert [x["output_ids"] for x in r.json()] == [hf.greedy(path, p, k) for p, k in zip(PROMPTS, (4, 6, 8))]


def test_n_samples_share_the_prompt_and_its_cache(client):
    prompt = list(range(100, 164))  # 4 full KV blocks, so copies 1..n-1 hit the prefix cache
    params = {"max_new_tokens": 8, "temperature": 1.0, "n": 4, "ignore_eos": True}
    r = client.post("/generate", json={"input_ids": prompt, "sampling_params": params, "rid": "nsamp"})
    assert r.status_code == 200, r.text
    results = r.json()
    assert len(results) == 4
    assert len({tuple(x["output_ids"]) for x in results}) == 4  # distinct samples
    assert all(x["meta_info"]["prompt_tokens"] == 64 for x in results)
    assert sum(x["meta_info"]["cached_tokens"] > 0 for x in results) >= 3
    assert [x["meta_info"]["id"] for x in results] == [f"nsamp_{i}" for i in range(4)]


def test_sampling_seed_is_reproducible(client):
    body = {"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 10, "temperature": 1.0, "sampling_seed": 7}}
    first, second = (client.post("/generate", json=body).json() for _ in range(2))
    assert first["output_ids"] == second["output_ids"]


def test_stream_is_cumulative_and_ends_like_the_plain_response(client):
    body = {"input_ids": PROMPTS[1], "sampling_params": greedy(10)}
    plain = client.post("/generate", json=body).json()
    with client.stream("POST", "/generate", json={**body, "stream": True, "return_logprob": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert len(events) > 1
    lengths = [len(e["output_ids"]) for e in events]
    assert lengths == sorted(lengths) and lengths[-1] == 10
    for prev, cur in itertools.pairwise(events):
        assert cur["output_ids"][: len(prev["output_ids"])] == prev["output_ids"]
        assert cur["text"].startswith(prev["text"])
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    last = events[-1]
    assert last["output_ids"] == plain["output_ids"] and last["text"] == plain["text"]
    assert last["meta_info"]["finish_reason"] == plain["meta_info"]["finish_reason"]
    assert len(last["meta_info"]["output_token_logprobs"]) == 10


def test_stream_batch_events_carry_index(client):
    body = {"input_ids": PROMPTS[:2], "sampling_params": greedy(3), "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        events = sse_events(r)
    assert {e["index"] for e in events} == {0, 1}
    assert sum(e["meta_info"]["finish_reason"] is not None for e in events) == 2


def test_stream_interval(client):
    body = {"input_ids": PROMPTS[0], "sampling_params": greedy(9, stream_interval=4), "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        lengths = [len(e["output_ids"]) for e in sse_events(r)]
    assert lengths == [1, 5, 9]


def test_logprob_triples_match_hf(client, model_dir, hf):
    path = model_dir("qwen3", seed=0)
    prompt = PROMPTS[0]
    r = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(6), "return_logprob": True})
    meta = r.json()["meta_info"]
    triples = meta["output_token_logprobs"]
    assert len(triples) == meta["completion_tokens"] == meta["output_token_logprobs_length"] == 6
    assert [t[1] for t in triples] == r.json()["output_ids"]
    assert all(len(t) == 3 and t[2] is None for t in triples)
    expected = hf.logprobs(path, prompt + r.json()["output_ids"], len(prompt), 0.0)
    assert [t[0] for t in triples] == pytest.approx(expected.tolist(), abs=1e-3)
    r = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(3), "return_logprob": True,
                                       "return_text_in_logprobs": True})
    assert all(isinstance(t[2], str) for t in r.json()["meta_info"]["output_token_logprobs"])
    assert all(math.isfinite(t[0]) for t in triples)


def test_stop_token_and_stop_string(client):
    prompt = PROMPTS[1]
    ids = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(8)}).json()["output_ids"]
    stop_id = ids[3]
    r = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(8, stop_token_ids=[stop_id])})
    body = r.json()
    first = ids.index(stop_id)
    assert body["output_ids"] == ids[: first + 1]  # the stop token is kept in output_ids
    assert body["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}

    full = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(8)}).json()["text"]
    stop = full[len(full) // 2:][:2]
    if stop.strip():
        r = client.post("/generate", json={"input_ids": prompt, "sampling_params": greedy(8, stop=stop)}).json()
        assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        assert stop not in r["text"] and full.startswith(r["text"])


def test_rids_and_prompt_token_ids(client):
    r = client.post("/generate", json={"input_ids": PROMPTS[0], "rid": "my-rid", "sampling_params": greedy(2),
                                       "return_prompt_token_ids": True}).json()
    assert r["meta_info"]["id"] == "my-rid" and r["prompt_token_ids"] == PROMPTS[0]
    batch = client.post("/generate", json={"input_ids": PROMPTS[:2], "rid": "b", "sampling_params": greedy(2)}).json()
    assert [x["meta_info"]["id"] for x in batch] == ["b_0", "b_1"]
    batch = client.post("/generate", json={"input_ids": PROMPTS[:2], "rid": ["x", "y"], "sampling_params": greedy(2)}).json()
    assert [x["meta_info"]["id"] for x in batch] == ["x", "y"]


def test_put_generate_and_zero_new_tokens(client):
    r = client.put("/generate", json={"input_ids": PROMPTS[0], "sampling_params": {"max_new_tokens": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["output_ids"] == [] and r.json()["meta_info"]["finish_reason"]["type"] == "length"
