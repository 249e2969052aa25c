"""EngineClient against fake endpoints on 127.0.0.1: calls, error messages, retry rules."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from rollout_helpers import fake_engine_app, free_port_url, serve

from temper.rollout.async_loop import run
from temper.rollout.engine_client import EngineClient, EngineError


async def _with_client(url: str, fn, **kw):
    async with EngineClient(url, **kw) as client:
        return await fn(client)


def call(url: str, fn, **kw):
    return run(_with_client(url, fn, **kw), timeout=60)


def test_engine_calls():
    app = fake_engine_app("e")
    with serve(app) as url:
        out = call(url, lambda c: c.generate({"input_ids": [1]}, routing_key="group-3"))
        assert out["output_ids"] == [7, 8, 9]
        assert app.state.calls[-1][2]["x-routing-key"] == "group-3"
        assert call(url, lambda c: c.health()) is True
        assert call(url, lambda c: c.num_requests()) == 3
        assert call(url, lambda c: c.flush_cache()) is True
        assert call(url, lambda c: c.get_weight_version()) == "v1"
        call(url, lambda c: c.abort_all())
        assert app.state.calls[-1][:2] == ("/abort_request", {"abort_all": True})


def test_http_errors_are_not_retried_and_carry_the_message():
    app = FastAPI()
    hits = []

    @app.post("/generate")
    async def generate():
        hits.append(1)
        return JSONResponse({"error": {"message": "input_ids cannot be empty."}}, 400)

    @app.post("/flush_cache")
    async def flush():
        return JSONResponse({"error": {"message": "requests are running"}}, 400)

    @app.get("/v1/loads")
    async def loads():  # the flat include=core shape
        return {"dp_rank": 0, "num_running_reqs": 2, "num_waiting_reqs": 0}

    @app.get("/workers")
    async def workers():
        return {"workers": [{"url": "http://a:1"}, {"url": "http://b:2"}]}

    with serve(app) as url:
        with pytest.raises(EngineError, match=r"/generate: HTTP 400: input_ids cannot be empty") as err:
            call(url, lambda c: c.generate({"input_ids": []}))
        assert err.value.status == 400 and len(hits) == 1
        assert call(url, lambda c: c.flush_cache()) is False
        assert call(url, lambda c: c.num_requests()) == 2
        assert call(url, lambda c: c.workers()) == ["http://a:1", "http://b:2"]
        assert call(url, lambda c: c.health()) is False  # 404


def test_unreachable_engine_is_retried_then_named():
    url = free_port_url()
    with pytest.raises(EngineError, match=rf"{url}/generate: unreachable after 3 attempts"):
        call(url, lambda c: c.generate({"input_ids": [1]}), retries=2, backoff=0.01)
    assert call(url, lambda c: c.health(timeout=1)) is False


def test_list_workers_fallback_for_older_routers():
    app = FastAPI()

    @app.get("/list_workers")
    async def list_workers():
        return {"urls": ["http://a:1"]}

    with serve(app) as url:
        assert call(url, lambda c: c.workers()) == ["http://a:1"]
