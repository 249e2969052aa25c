"""OpenAI routes, driven by the `openai` client: models, completions, chat (tools), streaming, errors."""

from __future__ import annotations

import json

import openai
import pytest

from temper.engine.server.openai_protocol import TextDeltas, parse_tool_calls

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture()
def oai(served):
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", timeout=60, max_retries=0) as client:
        yield client


def test_models(oai, client):
    models = oai.models.list()
    assert [m.id for m in models.data] == ["tiny-qwen3"]
    assert oai.models.retrieve("tiny-qwen3").id == "tiny-qwen3"
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_completions(oai, served, model_dir, hf):
    prompt = "The quick brown fox"
    out = oai.completions.create(model="tiny-qwen3", prompt=prompt, max_tokens=6, temperature=0,
                                 extra_body={"ignore_eos": True, "return_token_ids": True})
    assert out.object == "text_completion" and out.model == "tiny-qwen3"
    choice = out.choices[0]
    ids = served.state.engine.tokenizer.encode(prompt)
    assert choice.model_extra["response_token_ids"] == hf.greedy(model_dir("qwen3", seed=0), ids, 6)
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 6 and out.usage.total_tokens == len(ids) + 6
    many = oai.completions.create(model="x", prompt=["a b", "c d"], max_tokens=2, n=2, temperature=1.0, logprobs=1)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert all(len(c.logprobs.token_logprobs) == len(c.logprobs.tokens) for c in many.choices)
    echoed = oai.completions.create(model="x", prompt=prompt, max_tokens=2, echo=True, temperature=0)
    assert echoed.choices[0].text.startswith(prompt)


def test_completions_stream_matches_plain(oai):
    kwargs = {"model": "tiny-qwen3", "prompt": [[5, 6, 7, 8]], "max_tokens": 8, "temperature": 0,
              "extra_body": {"ignore_eos": True}}
    plain = oai.completions.create(**kwargs).choices[0].text
    chunks = list(oai.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_chat(oai, served, model_dir, hf):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12+7?"}]
    out = oai.chat.completions.create(model="tiny-qwen3", messages=messages, max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
    assert out.object == "chat.completion"
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    tokenizer = served.state.engine.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)
    assert choice.model_extra["prompt_token_ids"] == prompt
    assert choice.model_extra["response_token_ids"] == hf.greedy(model_dir("qwen3", seed=0), prompt, 5)
    assert out.usage.completion_tokens == 5 and out.to_dict()["metadata"]["weight_version"] == "default"


def test_chat_stream_and_tools(oai):
    kwargs = {"model": "tiny-qwen3", "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 8,
              "temperature": 0, "tools": TOOLS, "extra_body": {"ignore_eos": True}}
    plain = oai.chat.completions.create(**kwargs).choices[0]
    chunks = list(oai.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.message.content
    assert chunks[-1].choices[0].finish_reason == plain.finish_reason


def test_chat_logprobs_and_n(oai):
    out = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=2,
                                      temperature=1.0, logprobs=True, extra_body={"ignore_eos": True})
    assert len(out.choices) == 2
    assert all(len(c.logprobs.content) == 3 for c in out.choices)


def test_openai_errors(oai, client):
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="m", prompt="x", max_tokens=2, temperature=-1)
    assert "temperature" in str(err.value)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", messages=[{"role": "wizard", "content": "x"}], max_tokens=2)
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["object"] == "error" and "max_tokens" in r.json()["message"]
    r = client.post("/v1/completions", content=json.dumps({"prompt": "x"}), headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "Content-Type" in r.json()["message"]
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and "messages" in r.json()["message"]


def test_parse_tool_calls():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])


def test_text_deltas_hold_back_what_may_change():
    d = TextDeltas(["</answer>"])
    assert d.delta("Hello </ans") == "Hello "
    assert d.delta("Hello </ans>x\ufffd") == "</ans>x"
    assert d.delta("Hello </ans>x done", final=True) == " done"
    held = TextDeltas([], hold_from="<tool_call>")
    assert held.delta("a <tool") == "a"
    assert held.delta("a <tool_call>{...") == ""
    tools = TextDeltas([], hold_from="<tool_call>")
    streamed = tools.delta("Let me check.\n") + tools.delta("Let me check.\n<tool_call>{")
    text = 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert streamed + tools.delta(content, final=True) == content == "Let me check." and len(calls) == 1
