"""Request validation: 400s that name the field, SGLang fields accepted and ignored."""

from __future__ import annotations

import pytest
from server_helpers import greedy

BAD_SAMPLING = [
    ({"temperature": -1}, "temperature must be a non-negative finite number"),
    ({"top_p": 2}, "top_p must be in (0, 1]"),
    ({"top_p": 0}, "top_p must be in (0, 1]"),
    ({"top_k": 0}, "top_k must be -1 (disable) or at least 1"),
    ({"min_p": 1.5}, "min_p must be in [0, 1]"),
    ({"max_new_tokens": -1}, "max_new_tokens must be at least 0"),
    ({"n": 0}, "n must be at least 1"),
    ({"repetition_penalty": 0}, "repetition_penalty must be in (0, 2]"),
    ({"stop": ["x"] * 33}, "at most 32 stop strings"),
    ({"seed": 3}, "sampling_params.seed: unknown field"),
    ({"bogus_key": 1}, "sampling_params.bogus_key: unknown field"),
    ({"temperature": "hot"}, "sampling_params.temperature"),
    ({"max_new_tokens": 1.5}, "sampling_params.max_new_tokens"),
    ({"ignore_eos": 1}, "sampling_params.ignore_eos"),
    ({"stop": 5}, "sampling_params.stop"),
    ({"regex": "a", "json_schema": "{}"}, "Only one of json_schema, regex, ebnf, or structural_tag"),
]


def _error(r) -> str:
    assert r.status_code == 400, r.text
    return r.json()["error"]["message"]


@pytest.mark.parametrize("params,message", BAD_SAMPLING)
def test_bad_sampling_params_are_400_naming_the_field(client, params, message):
    r = client.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": params})
    assert message in _error(r)


@pytest.mark.parametrize("body,message", [
    ({"text": 5}, "text"),
    ({"input_ids": [1, "a"]}, "input_ids"),
    ({"input_ids": [1, 2], "stream": "yes"}, "stream"),
    ({"input_ids": [1, 2], "return_logprob": 1}, "return_logprob"),
    ({"input_ids": [1, 2], "sampling_params": [{}, {}]}, "sampling_params: expected 1 entries"),
    ({"input_ids": [[1, 2], [3]], "rid": ["a"]}, "rid: expected 2 entries"),
    ({"input_ids": [[1, 2], [3]], "rid": ["a", "a"]}, "rid: duplicate"),
    ({"input_ids": []}, "input_ids cannot be empty"),
    ({"input_ids": [1, 10**6]}, "out of range"),
    ({}, "Either text, input_ids or input_embeds should be provided."),
    ({"input_embeds": [[0.1]]}, "input_embeds: not supported"),
    ({"input_ids": [[1], [2]], "sampling_params": [{"n": 1}, {"n": 2}]}, "parallel_sample_num should be the same"),
])
def test_bad_bodies_are_400(client, body, message):
    assert message in _error(client.post("/generate", json=body))


def test_invalid_json_and_non_object(client):
    r = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert "invalid JSON" in _error(r)
    assert "expected a JSON object" in _error(client.post("/generate", json=[1, 2]))


def test_prompt_longer_than_context_is_400(client, served):
    context = served.state.context_len
    r = client.post("/generate", json={"input_ids": [5] * context, "sampling_params": {"max_new_tokens": 1}})
    assert "is longer than the model's context length" in _error(r)
    r = client.post("/generate", json={"input_ids": [5] * (context - 4), "sampling_params": {"max_new_tokens": 10}})
    assert "Requested token count exceeds the model's maximum context length" in _error(r)
    r = client.post("/generate", json={"input_ids": [5] * (context - 4), "sampling_params": {"max_new_tokens": None, "ignore_eos": True}})
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 4


def test_ignored_sglang_fields_are_accepted(client):
    body = {
        "input_ids": [1, 2, 3], "sampling_params": greedy(2, spaces_between_special_tokens=False, min_new_tokens=0,
                                                         repetition_penalty=1.0, custom_params={"k": 1}),
        "model": "whatever", "log_metrics": False, "return_text_in_logprobs": True, "return_hidden_states": False,
        "return_entropy": False, "no_logs": True, "background": False, "return_bytes": False,
        "custom_logit_processor": None, "lora_path": None, "logprob_start_len": -1, "top_logprobs_num": 0,
        "data_parallel_rank": 0, "bootstrap_room": 123, "routed_dp_rank": None,
    }
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["meta_info"]["completion_tokens"] == 2


def test_unknown_route_is_404(client):
    assert client.get("/no_such_route").status_code == 404


def test_ignored_fields_are_logged_once(caplog):
    from temper.engine.server.protocol import note_ignored

    with caplog.at_level("INFO", logger="temper.engine.server.protocol"):
        note_ignored({"some_new_field_xyz": 1})
        note_ignored({"some_new_field_xyz": 2})
    assert sum("some_new_field_xyz" in r.getMessage() for r in caplog.records) == 1
