"""Control routes: abort, pause/continue, flush_cache, weight version, health and info reports."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch
from server_helpers import TIMEOUT, greedy

LONG = {"max_new_tokens": 3000, "temperature": 0, "ignore_eos": True}  # seconds of decoding on CPU


async def _stream_until(client: httpx.AsyncClient, body: dict, started: asyncio.Event, tokens: int = 2) -> list[dict]:
    """POST a streaming /generate; set `started` once `tokens` tokens arrived; return every event."""
    events = []
    async with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events.append(json.loads(line[6:]))
            if len(events[-1]["output_ids"]) >= tokens:
                started.set()
    return events


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_abort_by_rid_prefix_and_abort_all(served):
    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            started = [asyncio.Event() for _ in range(3)]
            tasks = [asyncio.create_task(_stream_until(c, {"input_ids": [1, 2, 3 + i], "rid": rid, "sampling_params": LONG}, ev))
                     for i, (rid, ev) in enumerate(zip(["job-a", "job-b", "other"], started))]
            plain = asyncio.create_task(c.post("/generate", json={"input_ids": [9, 9], "rid": "plain", "sampling_params": LONG}))
            await asyncio.gather(*(e.wait() for e in started))
            assert (await c.post("/abort_request", json={"rid": "job"})).status_code == 200  # prefix: job-a, job-b
            a, b = await tasks[0], await tasks[1]
            assert not tasks[2].done()
            await c.post("/abort_request", json={"abort_all": True})
            other, plain_resp = await tasks[2], await plain
            return a, b, other, plain_resp.json()

    a, b, other, plain = _run(scenario())
    for events in (a, b, other):
        final = events[-1]["meta_info"]
        assert final["finish_reason"]["type"] == "abort"
        assert 2 <= final["completion_tokens"] < LONG["max_new_tokens"]
        assert final["completion_tokens"] == len(events[-1]["output_ids"])
    assert plain["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(plain["output_ids"]) == plain["meta_info"]["completion_tokens"] < LONG["max_new_tokens"]


def test_pause_in_place_holds_progress_and_continue_resumes(served, client, model_dir, hf):
    prompt = [5, 6, 7, 8]
    n = 300

    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            started = asyncio.Event()
            task = asyncio.create_task(_stream_until(c, {"input_ids": prompt, "sampling_params": greedy(n)}, started, tokens=5))
            await started.wait()
            r = await c.post("/pause_generation", json={"mode": "in_place"})
            assert r.json() == {"message": "Generation paused successfully.", "status": "ok"}
            before = served.state.engine.stats["generated_tokens"]
            held = asyncio.create_task(c.post("/generate", json={"input_ids": [1, 2], "sampling_params": greedy(3)}))
            await asyncio.sleep(0.5)
            assert served.state.engine.stats["generated_tokens"] == before  # no progress while paused
            assert not task.done() and not held.done()
            assert (await c.get("/health")).status_code == 200
            assert (await c.post("/flush_cache")).status_code == 400  # requests are still running
            r = await c.post("/continue_generation", json={})
            assert r.json()["status"] == "ok"
            return await task, (await held).json()

    events, held = _run(scenario())
    assert events[-1]["output_ids"] == hf.greedy(model_dir("qwen3", seed=0), prompt, n)  # pause changed nothing
    assert held["meta_info"]["completion_tokens"] == 3


def test_pause_abort_mode_aborts_and_lets_the_cache_flush(served):
    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            started = asyncio.Event()
            task = asyncio.create_task(_stream_until(c, {"input_ids": [4, 4, 4], "sampling_params": LONG}, started))
            await started.wait()
            await c.post("/pause_generation", content=b"")  # no body: mode "abort"
            events = await task
            flushed = await c.get("/flush_cache")
            later = asyncio.create_task(c.post("/generate", json={"input_ids": [1], "sampling_params": greedy(2)}))
            await asyncio.sleep(0.3)
            assert not later.done()
            await c.post("/continue_generation")
            return events, flushed, (await later).json()

    events, flushed, later = _run(scenario())
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert flushed.status_code == 200 and flushed.text.startswith("Cache flushed.")
    assert later["meta_info"]["completion_tokens"] == 2


def test_flush_cache_refused_while_busy(served):
    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            started = asyncio.Event()
            task = asyncio.create_task(_stream_until(c, {"input_ids": [3, 1], "sampling_params": LONG}, started))
            await started.wait()
            busy = await c.post("/flush_cache")
            await c.post("/abort_request", json={"abort_all": True})
            await task
            idle = await c.post("/flush_cache", params={"timeout": 5})
            return busy, idle

    busy, idle = _run(scenario())
    assert busy.status_code == 400 and idle.status_code == 200


def test_bad_query_parameters_are_400(client):
    r = client.post("/flush_cache", params={"timeout": "soon"})
    assert r.status_code == 400 and "timeout" in r.json()["message"]
    assert client.post("/flush_cache", params={"timeout": -1}).status_code == 400
    assert client.get("/v1/loads", params={"dp_rank": "x"}).status_code == 400


def test_update_weight_version(client):
    r = client.post("/update_weight_version", json={"new_version": "v-test"})
    assert r.json() == {"success": True, "message": "Weight version updated to v-test", "new_version": "v-test"}
    assert client.get("/get_weight_version").json() == {"weight_version": "v-test"}
    out = client.post("/generate", json={"input_ids": [1, 2], "sampling_params": greedy(2)}).json()
    assert out["meta_info"]["weight_version"] == "v-test"
    assert client.get("/model_info").json()["weight_version"] == "v-test"
    client.post("/update_weight_version", json={"new_version": "default"})
    assert client.post("/update_weight_version", json={"new_version": 3}).status_code == 400


@pytest.mark.parametrize("path", ["/health", "/health_generate"])
def test_health(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.content == b""


def test_model_and_server_info(client, served):
    for path in ("/model_info", "/get_model_info"):
        info = client.get(path).json()
        assert info["model_path"] == served.state.args.model and info["is_generation"] is True
        assert info["served_model_name"] == "tiny-qwen3" and info["model_type"] == "qwen3"
        assert info["architectures"] == ["Qwen3ForCausalLM"] and "weight_version" in info
    for path in ("/server_info", "/get_server_info"):
        info = client.get(path).json()
        for key in ("model_path", "served_model_name", "dp_size", "tp_size", "version", "weight_version",
                    "max_total_num_tokens", "internal_states", "context_length", "max_running_requests"):
            assert key in info, key
        assert info["dp_size"] == 1 and info["max_total_num_tokens"] > 0 and "api_key" not in info
        assert info["cuda_ipc_buffers_mapped"] == 0  # trainer buffers mapped by the ipc weight transport
        # what the engine runs with: on CPU the PyTorch reference kernels and no CUDA graphs
        assert info["engine_kernels"] == ["PyTorch reference"] and info["decode_cuda_graphs"] is False
        assert info["num_kv_blocks"] > 0 and info["max_model_len"] == info["context_length"]


def test_loads_and_metrics(client):
    client.post("/generate", json={"input_ids": list(range(40)), "sampling_params": greedy(3)})
    report = client.get("/v1/loads", params={"include": "core"}).json()
    assert report["version"] and report["num_accelerators"] == 1 and len(report["loads"]) == 1
    core = report["loads"][0]
    assert "queues" not in core and "memory" not in core
    for key in ("num_running_reqs", "num_waiting_reqs", "num_total_tokens", "token_usage", "max_total_num_tokens",
                "cache_hit_rate", "gen_throughput", "timestamp"):
        assert key in core, key
    full = client.get("/v1/loads").json()
    assert full["loads"][0]["dp_rank"] == 0 and "queues" in full["loads"][0] and "memory" in full["loads"][0]
    assert client.get("/v1/loads", params={"include": "bogus"}).status_code == 400
    prom = client.get("/v1/loads", params={"format": "prometheus"}).text
    assert 'sglang_num_running_reqs{dp_rank="0"}' in prom
    legacy = client.get("/get_load").json()
    assert legacy[0]["dp_rank"] == 0
    text = client.get("/metrics").text
    for name in ("sglang:num_running_reqs", "sglang:generation_tokens_total", "sglang:prompt_tokens_total",
                 "sglang:e2e_request_latency_seconds_bucket", "sglang:cache_hit_rate", "temper:weight_version_info"):
        assert name in text, name
    generated = [line for line in text.splitlines() if line.startswith("sglang:generation_tokens_total")]
    assert float(generated[0].rsplit(" ", 1)[1]) >= 3


def test_get_weights_by_name(client, model_dir):
    from safetensors.torch import load_file

    expected = load_file(str(model_dir("qwen3", seed=0) / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    rows = client.post("/get_weights_by_name", json={"name": "model.layers.0.mlp.up_proj.weight", "truncate_size": 3}).json()
    assert torch.allclose(torch.tensor(rows), expected[:3], atol=1e-6)
    assert client.post("/get_weights_by_name", json={"name": "nope"}).status_code == 400


def test_memory_release_and_resume(client):
    assert client.post("/release_memory_occupation", json={"tags": ["bogus"]}).status_code == 400
    r = client.post("/release_memory_occupation", json={})
    assert r.status_code == 200 and r.json() is None
    try:
        with pytest.raises(httpx.ReadTimeout):  # generation waits while memory is released
            client.post("/generate", json={"input_ids": [1], "sampling_params": greedy(1)}, timeout=0.5)
    finally:
        r = client.post("/resume_memory_occupation", json={"tags": None})
    assert r.status_code == 200 and r.json() is None
    out = client.post("/generate", json={"input_ids": [1], "sampling_params": greedy(2)}).json()
    assert out["meta_info"]["completion_tokens"] == 2


def test_abort_while_paused_in_place(served):
    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            started = asyncio.Event()
            task = asyncio.create_task(_stream_until(c, {"input_ids": [8, 8], "rid": "paused-job", "sampling_params": LONG}, started))
            await started.wait()
            await c.post("/pause_generation", json={"mode": "in_place"})
            try:
                await c.post("/abort_request", json={"rid": "paused-job"})
                events = await task  # ends at once, without an engine step
                flushed = await c.post("/flush_cache")
            finally:
                await c.post("/continue_generation")
            return events, flushed

    events, flushed = _run(scenario())
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert events[-1]["meta_info"]["completion_tokens"] == len(events[-1]["output_ids"]) >= 2
    assert flushed.status_code == 200


def test_non_streaming_request_aborted_while_paused_keeps_its_tokens(served):
    """A non-streaming request gets no per-token outputs; aborted while paused it still ends with
    every token it had (what a partial rollout continues from)."""
    engine = served.state.engine

    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            before = engine.stats["generated_tokens"]
            task = asyncio.create_task(c.post("/generate", json={"input_ids": [7, 7], "rid": "quiet-job", "sampling_params": LONG}))
            while engine.stats["generated_tokens"] < before + 4:
                await asyncio.sleep(0.01)
            await c.post("/pause_generation", json={"mode": "in_place"})
            try:
                await c.post("/abort_request", json={"rid": "quiet-job"})
                return (await task).json()
            finally:
                await c.post("/continue_generation")

    out = _run(scenario())
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] == "abort"
    assert meta["completion_tokens"] == len(out["output_ids"]) >= 4


def test_client_disconnect_aborts_its_requests(served):
    engine = served.state.engine

    async def scenario():
        async with httpx.AsyncClient(base_url=served.url, timeout=TIMEOUT) as c:
            started = asyncio.Event()
            stream = asyncio.create_task(_stream_until(c, {"input_ids": [2, 2], "sampling_params": LONG}, started))
            await started.wait()
            stream.cancel()  # closes the connection mid-stream
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/generate", json={"input_ids": [3, 3], "sampling_params": LONG}, timeout=0.5)
            for _ in range(300):  # the server notices within its disconnect poll interval
                if engine.stats["num_in_flight"] == 0:
                    return True
                await asyncio.sleep(0.02)
            return False

    assert _run(scenario())


def test_slime_weight_hooks_are_accepted(client):
    for path in ("/post_process_weights", "/weights_checker", "/begin_weight_update", "/end_weight_update"):
        r = client.post(path, json={"action": "snapshot", "restore_weights_before_load": False})
        assert r.status_code == 200 and r.json()["success"] is True, path
