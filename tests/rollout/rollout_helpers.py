"""Helpers for the rollout tests: configs, prompt files, plug-in files, apps served on 127.0.0.1.

`make_args(*flags)` builds a validated `Config` from slime-style flags over small defaults.
`serve(app)` runs any ASGI app on an ephemeral loopback port; `fake_engine_app` is an engine stand-in.
`running_engine_servers()` starts real temper engine servers on the tiny Qwen3. Helpers live in this
uniquely named module rather than a conftest.py, so no other test folder's module can shadow them.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request  # module level: the fake apps' string annotations resolve here
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from temper.command_line import parse_config
from temper.config import Config
from temper.testing import tiny_model_dir

BASE_FLAGS = ["--rollout-batch-size", "2", "--num-rollout", "1", "--actor-num-gpus-per-node", "1"]


def make_args(*flags: str) -> Config:
    """A validated Config from `flags` (later flags win over BASE_FLAGS)."""
    return parse_config([*BASE_FLAGS, *flags], check_shape=False)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def write_plugin(tmp_path: Path, name: str, source: str) -> Path:
    """A plug-in module file `name`.py in tmp_path holding `source` (dedented)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


@contextmanager
def serve(app, startup_timeout: float = 30.0) -> Iterator[str]:
    """Serve ASGI `app` on 127.0.0.1 (free port) in a thread; yields its base URL. On exit a request still
    running (a stuck engine's) is cancelled after 1 s instead of holding the thread to the join's timeout."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def free_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fake_engine_app(name: str, *, delay: float = 0.0, finish: str = "length"):
    """A FastAPI app answering the engine routes the rollout side uses, with canned outputs.

    `/generate` returns output_ids [7, 8, 9] with log-probs and `meta_info.id` = `name`, after
    `delay` seconds (streams: three cumulative chunks, then [DONE]). Every request body and header
    set is recorded in `app.state.calls` as (path, body, headers).
    """
    app = FastAPI()
    app.state.calls = []

    def output(upto: int, done: bool) -> dict:
        ids = [7, 8, 9][:upto]
        meta = {
            "id": name, "finish_reason": {"type": finish} if done else None, "prompt_tokens": 3,
            "completion_tokens": len(ids), "cached_tokens": 2, "weight_version": "v1",
            "output_token_logprobs": [[-0.5, i, None] for i in ids],
        }  # fmt: skip
        return {"text": " ".join(map(str, ids)), "output_ids": ids, "meta_info": meta}

    async def record(request: Request) -> dict:
        body = await request.json() if await request.body() else {}
        app.state.calls.append((request.url.path, body, dict(request.headers)))
        return body

    @app.post("/generate")
    async def generate(request: Request):
        body = await record(request)
        if body.get("stream"):

            async def events():
                for k in (1, 2, 3):
                    await asyncio.sleep(delay / 3)
                    yield f"data: {json.dumps(output(k, k == 3))}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        await asyncio.sleep(delay)
        if body.get("sampling_params", {}).get("max_new_tokens") == -1:
            return JSONResponse({"error": {"message": "max_new_tokens must be at least 0, got -1."}}, 400)
        return output(3, True)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        await record(request)

        async def events():
            for word in ("hi", "there"):
                yield f"data: {json.dumps({'choices': [{'delta': {'content': word}}], 'model': name})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    @app.get("/health_generate")
    async def health():
        return PlainTextResponse("")

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush(request: Request):
        await record(request)
        return PlainTextResponse("Cache flushed.\n")

    @app.post("/abort_request")
    async def abort(request: Request):
        await record(request)
        return PlainTextResponse("")

    @app.get("/v1/loads")
    async def loads():
        return {"loads": [{"dp_rank": 0, "num_running_reqs": 1, "num_waiting_reqs": 2}]}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    @app.get("/get_weight_version")
    async def weight_version():
        return {"weight_version": "v1"}

    return app


def tiny_dir() -> Path:
    """The tiny Qwen3 checkpoint folder (built once per process; read-only)."""
    return tiny_model_dir("qwen3")


@contextmanager
def running_engine_servers(count: int = 2) -> Iterator[list[str]]:
    """`count` real temper engine servers on 127.0.0.1 over the tiny Qwen3; yields their URLs. Torch
    runs on one thread meanwhile (tiny models run fastest so on the shared 2-core machine). Skips the
    calling test with a reason when `temper.engine.server` is missing."""
    server = pytest.importorskip("temper.engine.server", reason="temper.engine.server (the built-in engine) is missing")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = []
    try:
        for _ in range(count):
            args = server.ServerArgs(model=str(tiny_dir()), host="127.0.0.1", port=0, log_level="warning")
            started.append(server.ServerThread(args).start())
        yield [s.url for s in started]
    finally:
        for s in started:
            s.stop()
        torch.set_num_threads(threads)
