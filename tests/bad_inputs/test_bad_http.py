"""Bad HTTP requests against one real engine server on 127.0.0.1 (the tiny Qwen3, started once for the
module, with small limits: --max-request-bytes 16384, --max-n 4, --max-client-requests 2). Each gets a
4xx whose message names the field and what it must be; a field the engine does not implement is
accepted and logged once; a client that goes away mid-stream has its request aborted and its slot freed."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator

import httpx
import pytest
import torch

from temper.engine.server import ServerArgs, ServerThread

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
LONG = {"max_new_tokens": 4000, "temperature": 0, "ignore_eos": True}  # seconds of decoding on CPU


@pytest.fixture(scope="module")
def server(model) -> Iterator[ServerThread]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models decode fastest on one thread, and the machine is shared
    args = ServerArgs(model=model, host="127.0.0.1", port=0, log_level="warning", skip_server_warmup=True,
                      max_request_bytes=16384, max_n=4, max_client_requests=2)
    started = ServerThread(args).start()
    yield started
    started.stop()
    torch.set_num_threads(old)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


def error_of(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    return body["error"]["message"] if "error" in body else body["message"]  # native, OpenAI


# (route, body: bytes sent as is or an object sent as JSON, parts of the 400's message)
CASES = [
    pytest.param("/generate", b'{"input_ids": [1,', ["body: invalid JSON (Expecting value: line 1 column 18"],
                 id="http-malformed-json"),
    pytest.param("/generate", b'{"text": "\xff\xfe"}', ["body: invalid JSON ('utf-8' codec can't decode byte 0xff"],
                 id="http-body-not-utf8"),
    pytest.param("/generate", [1, 2], ["body: expected a JSON object, got list"], id="http-body-not-an-object"),
    pytest.param("/generate", b'{"input_ids": [1], "sampling_params": {"temperature": NaN}}',
                 ["sampling_params: temperature must be a non-negative finite number, got nan."], id="http-nan"),
    pytest.param("/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": "5"}},
                 ["sampling_params.max_new_tokens: Input should be a valid integer (got '5')"],
                 id="http-wrong-type-field"),
    pytest.param("/generate", {"input_ids": [1, "two"]}, ["input_ids.1: invalid value 'two'"],
                 id="http-wrong-type-ids"),
    pytest.param("/generate", {"input_ids": [1], "rid": 5}, ["rid: invalid value 5 (expected str or list[str])"],
                 id="http-wrong-type-rid"),
    pytest.param("/generate", {"input_ids": [1, 5000]}, ["input_ids: token id 5000 is out of range [0, 1024)"],
                 id="http-out-of-vocab-id"),
    pytest.param("/generate", {"input_ids": [1, -1]}, ["input_ids: token id -1 is out of range [0, 1024)"],
                 id="http-negative-id"),
    pytest.param("/generate", {"text": ""}, ["text: the prompt is empty"], id="http-empty-prompt"),
    pytest.param("/generate", {"input_ids": [1], "sampling_params": {"bogus_key": 1}},
                 ["sampling_params.bogus_key: unknown field; expected one of ['beam_width'"],
                 id="http-unknown-sampling-field"),
    pytest.param("/generate", {"input_ids": [1, 2], "sampling_params": {"n": 5, "max_new_tokens": 1}},
                 ["sampling_params.n: 5 samples per prompt is over this server's limit of 4 (--max-n)"],
                 id="http-n-over-cap"),
    pytest.param("/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 10**9}},
                 ["Requested token count exceeds the model's maximum context length of 4096 tokens",
                  "Please reduce the number of tokens"], id="http-max-new-tokens-over-context"),
    pytest.param("/generate", {"input_ids": [5] * 4096, "sampling_params": {"max_new_tokens": 1}},
                 ["is longer than the model's context length"], id="http-prompt-over-context"),
    pytest.param("/v1/completions", {"model": "m", "prompt": [1, 2], "n": 9, "max_tokens": 1},
                 ["n: 9 samples per prompt is over this server's limit of 4 (--max-n)"],
                 id="http-openai-n-over-cap"),
    pytest.param("/v1/completions", {"model": "m", "prompt": [1, 2], "max_tokens": 10**9},
                 ["prompt: Requested token count exceeds the model's maximum context length"],
                 id="http-openai-max-tokens-over-context"),
    pytest.param("/v1/completions", {"model": "m", "prompt": "hi", "temperature": "warm"},
                 ["temperature: Input should be a valid number"], id="http-openai-wrong-type"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": "hi"},
                 ["messages: Input should be a valid list (got 'hi')"], id="http-openai-messages-not-a-list"),
    pytest.param("/v1/chat/completions", {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
                 ["messages: the chat template failed: unknown chat role wizard"], id="http-openai-unknown-role"),
]


@pytest.mark.parametrize("route, body, parts", CASES)
def test_each_http_case(client, route, body, parts):
    if isinstance(body, bytes):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(route, json=body)
    message = error_of(r)
    for part in parts:
        assert part in message, (part, message)


def test_http_oversized_body(client):
    """Over --max-request-bytes: 413 whether the size is declared or the body comes in chunks; the server
    goes on serving."""
    r = client.post("/generate", json={"input_ids": [1] * 10000})  # over 16 KB, however compact
    assert "--max-request-bytes" in error_of(r, 413)

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"input_ids": [' + b"1, " * 6000
        yield b'1], "sampling_params": {"max_new_tokens": 1}}'

    assert "--max-request-bytes" in error_of(client.post("/generate", content=chunks()), 413)
    ok = client.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}})
    assert ok.status_code == 200


def test_http_unknown_field_accepted_and_logged(client, caplog):
    """SGLang's contract: a field the engine does not implement is accepted and ignored, logged once."""
    with caplog.at_level(logging.INFO, logger="temper.engine.server.protocol"):
        for _ in range(2):
            r = client.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1},
                                               "bad_inputs_new_field": True})
            assert r.status_code == 200, r.text
        r = client.post("/v1/completions", json={"model": "m", "prompt": [1, 2], "max_tokens": 1,
                                                 "bad_inputs_openai_field": 1})
        assert r.status_code == 200, r.text
    logged = [m for m in caplog.messages if "bad_inputs_" in m]
    assert logged == [
        "ignoring request field 'bad_inputs_new_field': accepted for SGLang compatibility, not implemented",
        "ignoring request field 'openai.bad_inputs_openai_field': accepted for SGLang compatibility, not implemented",
    ]


async def _first_event_then_leave(c: httpx.AsyncClient) -> None:
    """Open a streaming /generate, read its first event, and close the connection."""
    async with c.stream("POST", "/generate", json={"input_ids": [2, 2], "stream": True, "sampling_params": LONG}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                return


def test_http_stream_client_disconnects(server, client):
    """A streaming client that goes away mid-stream: its request is aborted (far short of max_new_tokens)
    and its --max-client-requests slot is freed (two such clients, then a third request is served)."""
    engine = server.state.engine
    before = engine.stats["generated_tokens"]

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as c:
            for _ in range(2):
                await _first_event_then_leave(c)
        for _ in range(500):  # the server notices within its disconnect poll interval
            if engine.stats["num_in_flight"] == 0:
                return True
            await asyncio.sleep(0.02)
        return False

    assert asyncio.run(asyncio.wait_for(scenario(), 60)), "the abandoned requests are still in flight"
    assert engine.stats["generated_tokens"] - before < LONG["max_new_tokens"]
    r = client.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 200 and len(r.json()["output_ids"]) == 2


def test_http_too_many_requests_per_client(server):
    """A third generation request from a client with two in flight: 429 naming the flag; the two are not
    lost (aborted, they report finish_reason abort)."""
    engine = server.state.engine

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as c:
            tasks = [asyncio.create_task(c.post("/generate", json={"input_ids": [5, i], "sampling_params": LONG}))
                     for i in range(2)]
            while engine.stats.get("num_running", 0) + engine.stats.get("num_waiting", 0) < 2:
                await asyncio.sleep(0.01)
            third = await c.post("/generate", json={"input_ids": [5, 9], "sampling_params": {"max_new_tokens": 1}})
            await c.post("/abort_request", json={"abort_all": True})
            return third, await asyncio.gather(*tasks)

    third, first_two = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "--max-client-requests" in error_of(third, 429)
    assert [r.json()["meta_info"]["finish_reason"]["type"] for r in first_two] == ["abort", "abort"]


def test_http_weights_from_missing_folder(client, tmp_path):
    r = client.post("/update_weights_from_disk", json={"model_path": str(tmp_path / "nowhere")})
    assert r.status_code == 400 and f"no *.safetensors files in {tmp_path}/nowhere" in r.json()["message"]


def test_http_weights_from_truncated_file(client, model, tmp_path):
    """A truncated checkpoint sent to a running engine: refused naming the file, and the engine keeps its
    weights (the file fails to open before any tensor is read) and goes on serving."""
    folder = tmp_path / "cut"
    shutil.copytree(model, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    greedy = {"input_ids": [3, 4], "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    before = client.post("/generate", json=greedy)
    r = client.post("/update_weights_from_disk", json={"model_path": str(folder)})
    assert r.status_code == 400
    assert f"{folder}/model.safetensors: cannot be read as safetensors" in r.json()["message"]
    assert "truncated or corrupt, copy it again" in r.json()["message"]
    after = client.post("/generate", json=greedy)
    assert after.json()["output_ids"] == before.json()["output_ids"]
