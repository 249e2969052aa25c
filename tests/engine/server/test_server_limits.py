"""The server's limits: body size (413), samples per prompt (400), requests in flight per client (429),
a bounded wait for requests held while paused or released (503), the control routes refused beyond
loopback without an API key (403), and no route that unpickles what it receives."""

from __future__ import annotations

import ast
import asyncio
import pickle
from pathlib import Path

import httpx
import pytest
from server_helpers import TIMEOUT, greedy, start_server

import temper.engine.server as server_package


@pytest.fixture(scope="module")
def limited(model_dir):
    server = start_server(model_dir("qwen3", seed=0), max_request_bytes=4096, max_n=4, max_client_requests=2,
                          held_request_timeout=1.5, skip_server_warmup=True)
    yield server
    server.stop()


def test_body_over_the_limit_is_413_whether_declared_or_chunked(limited):
    big = {"input_ids": [1] * 3000, "sampling_params": greedy(1)}  # ~6 KB of JSON
    r = httpx.post(f"{limited.url}/generate", json=big, timeout=TIMEOUT)
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"input_ids": [' + b"1, " * 2000
        yield b'1], "sampling_params": {"max_new_tokens": 1}}'

    r = httpx.post(f"{limited.url}/generate", content=chunks(), timeout=TIMEOUT)
    assert r.status_code == 413
    ok = httpx.post(f"{limited.url}/generate", json={"input_ids": [1, 2], "sampling_params": greedy(2)}, timeout=TIMEOUT)
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 2


def test_n_over_the_cap_is_400_naming_the_field(limited):
    body = {"input_ids": [1, 2], "sampling_params": {**greedy(1), "n": 5}}
    r = httpx.post(f"{limited.url}/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("sampling_params.n: 5 samples")
    r = httpx.post(f"{limited.url}/v1/completions", json={"model": "m", "prompt": [1, 2], "n": 9, "max_tokens": 1},
                   timeout=TIMEOUT)
    assert r.status_code == 400 and "--max-n" in r.text
    r = httpx.post(f"{limited.url}/generate", json={**body, "sampling_params": {**greedy(1), "n": 4}}, timeout=TIMEOUT)
    assert r.status_code == 200 and len(r.json()) == 4


def test_requests_held_while_paused_get_a_503_in_bounded_time_and_health_generate_says_so(limited):
    async def scenario():
        async with httpx.AsyncClient(base_url=limited.url, timeout=TIMEOUT) as c:
            await c.post("/pause_generation", json={"mode": "in_place"})
            try:
                health = await c.get("/health_generate")
                started = asyncio.get_running_loop().time()
                r = await c.post("/generate", json={"input_ids": [3, 4], "sampling_params": greedy(2)})
                waited = asyncio.get_running_loop().time() - started
            finally:
                await c.post("/continue_generation")
            after = await c.post("/generate", json={"input_ids": [3, 4], "sampling_params": greedy(2)})
            return health, r, waited, after

    health, r, waited, after = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert health.status_code == 503 and "paused" in health.text
    assert r.status_code == 503 and "--held-request-timeout" in r.json()["error"]["message"]
    assert 1.4 <= waited < 3 * 1.5
    assert after.status_code == 200


def test_requests_in_flight_per_client_are_capped(limited):
    engine = limited.state.engine
    long = {"max_new_tokens": 2000, "temperature": 0, "ignore_eos": True}

    async def scenario():
        async with httpx.AsyncClient(base_url=limited.url, timeout=TIMEOUT) as c:
            tasks = [asyncio.create_task(c.post("/generate", json={"input_ids": [5, i], "rid": f"cap-{i}",
                                                                   "sampling_params": long})) for i in range(2)]
            while engine.stats.get("num_running", 0) + engine.stats.get("num_waiting", 0) < 2:
                await asyncio.sleep(0.01)
            third = await c.post("/generate", json={"input_ids": [5, 9], "sampling_params": greedy(1)})
            await c.post("/abort_request", json={"abort_all": True})
            finished = await asyncio.gather(*tasks)
            fourth = await c.post("/generate", json={"input_ids": [5, 9], "sampling_params": greedy(1)})
            return third, finished, fourth

    third, finished, fourth = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert third.status_code == 429 and "--max-client-requests" in third.json()["error"]["message"]
    assert [r.status_code for r in finished] == [200, 200]
    assert fourth.status_code == 200


def test_control_routes_refused_beyond_loopback_without_a_key(model_dir):
    server = start_server(model_dir("qwen3", seed=0), host="0.0.0.0", skip_server_warmup=True)
    url = f"http://127.0.0.1:{server.port}"
    try:
        r = httpx.post(f"{url}/release_memory_occupation", json={}, timeout=TIMEOUT)
        assert r.status_code == 403 and "--api-key" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/update_weights_from_disk", json={"model_path": "/nonexistent"}, timeout=TIMEOUT)
        assert r.status_code == 403
        r = httpx.post(f"{url}/generate", json={"input_ids": [1], "sampling_params": greedy(1)}, timeout=TIMEOUT)
        assert r.status_code == 200  # generation stays open
    finally:
        server.stop()
    # with a key (a run's engines on other nodes get one), every route but /health and /ping needs it
    keyed = start_server(model_dir("qwen3", seed=0), host="0.0.0.0", api_key="run-key", skip_server_warmup=True)
    url, auth = f"http://127.0.0.1:{keyed.port}", {"Authorization": "Bearer run-key"}
    try:
        for path in ("/update_weights_from_disk", "/init_weights_update_group", "/update_weights_from_tensor",
                     "/release_memory_occupation", "/flush_cache", "/generate"):
            r = httpx.post(f"{url}{path}", json={}, timeout=TIMEOUT)
            assert r.status_code == 401, path
        assert httpx.get(f"{url}/get_weight_version", timeout=TIMEOUT).status_code == 401
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
        assert httpx.post(f"{url}/flush_cache", json={}, headers=auth, timeout=TIMEOUT).status_code == 200
        r = httpx.post(f"{url}/update_weights_from_disk", json={"model_path": "/nonexistent"}, headers=auth,
                       timeout=TIMEOUT)
        assert r.status_code == 400 and "/nonexistent" in r.text  # past the key: the request itself is judged
    finally:
        keyed.stop()


def test_no_route_unpickles_request_data(client):
    """Nothing in the server package calls pickle/dill/cloudpickle loads or torch.load without
    weights_only; a pickled tensor payload is refused."""
    package = Path(server_package.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal") for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if getattr(node.func.value, "id", None) == "torch":
                    assert any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords), path
    payload = pickle.dumps({"model.norm.weight": [1.0] * 4}).hex()
    r = client.post("/update_weights_from_tensor", json={"serialized_named_tensors": [payload]})
    assert r.status_code == 400
