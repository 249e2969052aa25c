"""The FastAPI app of temper's engine server: SGLang's native HTTP API (DESIGN.md, Contract 1).

`create_app(state)` assembles the routes of this module (``/generate``, health, info, load and
metrics), `control_api` (cache, abort, pause, weights, memory) and `openai_api` (``/v1/...``). The
app's lifespan starts the engine loop thread, runs one warmup generation (unless skipped) and stops
the loop at shutdown. Errors: a `RequestError` or ValueError is a 400 ``{"error": {"message"}}``;
anything else a 500 of the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

import temper
from temper.engine.server.async_engine import Unavailable
from temper.engine.server.context import (
    BodyTooLarge,
    ServerState,
    dumps,
    json_body,
    json_response,
    native_error,
    state_of,
    until_disconnected,
)
from temper.engine.server.generation import (
    SubRequest,
    SubRequestRun,
    check_n,
    collect_final,
    format_output,
    new_rid,
    plan_generate,
    should_stream,
)
from temper.engine.server.metrics import (
    core_load,
    load_entry,
    loads_prometheus,
    parse_include,
    prometheus_text,
)
from temper.engine.server.protocol import GenerateReqInput, RequestError, parse_model
from temper.engine.server.sampling import build_sampling

logger = logging.getLogger(__name__)
router = APIRouter()
_OPEN_PATHS = frozenset({"/health", "/ping"})  # liveness: answered without --api-key
_GENERATION_PATHS = frozenset({"/generate", "/v1/completions", "/v1/chat/completions"})


def create_app(state: ServerState) -> FastAPI:
    """The app serving `state.engine`; the engine loop starts and stops with the app's lifespan."""
    from temper.engine.server import control_api, openai_api

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        try:
            warm = state.args.skip_server_warmup or await _probe(
                state, timeout=max(state.args.health_check_timeout, 60.0), max_new_tokens=8)
            if not warm:
                logger.warning("warmup generation produced no output in time; serving anyway")
            # Everything built so far (model, kernels, libraries) lives as long as the server: keep it out of
            # the collector's full passes, which would otherwise scan it between engine steps.
            gc.collect()
            gc.freeze()
            state.ready = True
            yield
        finally:
            state.ready = False
            state.engine.stop()
            state.engine.close()
            for group in state.groups.values():
                group.close()

    app = FastAPI(title="temper engine", version=temper.__version__, lifespan=lifespan)
    app.state.server = state
    app.include_router(router)
    app.include_router(control_api.router)
    app.include_router(openai_api.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(BodyTooLarge, _too_large)
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(ClientLimit, limit=state.args.max_client_requests)
    admin = frozenset(route.path for route in control_api.router.routes)
    app.add_middleware(Access, args=state.args, admin_paths=admin)
    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 for a bad query parameter becomes SGLang's 400 (OpenAI-style body)."""
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return json_response({"object": "error", "message": message, "type": "Bad Request", "param": None, "code": 400}, 400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
    return native_error(f"Internal server error: {exc}", 500)


async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
    return native_error(str(exc), 413)


async def _unavailable(request: Request, exc: Unavailable) -> Response:
    return native_error(str(exc), 503)


class Access:
    """Who may call what (ASGI middleware). With ``--api-key``, every route but /health and /ping needs
    ``Authorization: Bearer KEY`` (401). Without one, a server listening beyond loopback refuses the
    weight, memory and control routes (`admin_paths`) with a 403: anyone who reaches the port could
    otherwise replace the weights."""

    def __init__(self, app: Any, args: Any, admin_paths: frozenset[str]):
        self.app, self.key, self.admin_paths = app, args.api_key, admin_paths
        self.open_admin = args.control_open
        self.host = args.host

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in _OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.key is not None:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != f"Bearer {self.key}".encode():
                return await json_response({"error": "Unauthorized"}, 401)(scope, receive, send)
        elif not self.open_admin and scope["path"] in self.admin_paths:
            return await native_error(
                f"{scope['path']} is refused: this server listens on {self.host} (beyond loopback) without an API "
                "key; start it with --api-key KEY to allow the weight, memory and control routes", 403,
            )(scope, receive, send)
        return await self.app(scope, receive, send)


class ClientLimit:
    """At most `limit` generation requests in flight from one client address (ASGI middleware); the
    next gets a 429. A streaming request counts until its last event is sent."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in _GENERATION_PATHS:
            return await self.app(scope, receive, send)
        host = (scope.get("client") or ("unknown", 0))[0]
        if self.in_flight.get(host, 0) >= self.limit:
            return await native_error(
                f"client {host} already has {self.limit} generation requests in flight, this server's limit "
                "(--max-client-requests); retry when some have finished", 429,
            )(scope, receive, send)
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[host] -= 1
            if not self.in_flight[host]:
                del self.in_flight[host]


# ---- generation ----------------------------------------------------------------------------------


@router.api_route("/generate", methods=["POST", "PUT"])
async def generate(request: Request) -> Response:
    """SGLang ``/generate``: one object (or a list for batches), or an SSE stream of cumulative chunks."""
    state = state_of(request)
    try:
        body = parse_model(GenerateReqInput, await json_body(request))
        subs, batch = plan_generate(body, state.engine, state.context_len, state.prefix_caching)
        check_n(subs, state.args.max_n, "sampling_params.n")
        run = SubRequestRun(state.engine, subs)
        await run.start()
    except ValueError as e:
        return native_error(str(e))
    if body.stream:
        return StreamingResponse(_sse(state, run, batch), media_type="text/event-stream")
    try:
        final = await until_disconnected(request, collect_final(run, state.observe), run.close)
    except ValueError as e:
        return native_error(str(e))
    if final is None:  # the client went away; its requests were aborted
        return Response(status_code=499)
    results = [format_output(sub, out, state.token_texts) for sub, out in final]
    return json_response(results if batch else results[0])


async def _sse(state: ServerState, run: SubRequestRun, batch: bool) -> AsyncIterator[str]:
    """``data: {cumulative object}`` events (with ``index`` for batches), then ``data: [DONE]``."""
    try:
        async for sub, out in run.outputs():
            if out.finished:
                state.observe(sub, out)
            if should_stream(sub, out):
                obj = format_output(sub, out, state.token_texts)
                if batch:
                    obj["index"] = sub.index
                yield f"data: {dumps(obj)}\n\n"
    except Exception as e:  # noqa: BLE001 -- the status line is already sent: report in-band, as SGLang does
        yield f"data: {dumps({'error': {'message': str(e)}})}\n\n"
    finally:
        run.close()
    yield "data: [DONE]\n\n"


# ---- health and info -----------------------------------------------------------------------------


async def _probe(state: ServerState, timeout: float, max_new_tokens: int = 1) -> bool:
    """Generate from ``input_ids=[0]``; True once *any* engine output arrives (a busy server answers
    at once), False after `timeout` seconds."""
    choice = build_sampling({"max_new_tokens": max_new_tokens, "temperature": 0.0}, "probe", 1, state.context_len)
    sub = SubRequest(index=0, rid=f"HEALTH_CHECK_{new_rid()}", prompt_ids=[0], sampling=choice)
    run = SubRequestRun(state.engine, [sub])
    progress = state.engine.progress_future()
    try:
        await run.start()
        await asyncio.wait_for(progress, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        run.close()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 once the server is ready and the engine produces output; 503 otherwise. A paused server (or
    one whose memory is released) is alive by choice and answers 200 without a probe."""
    return await _health(state_of(request), idle_is_healthy=True)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """Whether a generation request would be served now: 200 once the engine produces output; 503 while
    it is not ready, paused or its memory released (requests sent meanwhile wait up to
    --held-request-timeout, then get a 503), with the reason in the body."""
    return await _health(state_of(request), idle_is_healthy=False)


async def _health(state: ServerState, idle_is_healthy: bool) -> Response:
    if not state.ready:
        return Response(status_code=503)
    engine = state.engine
    if (why := engine.not_serving) is not None:
        if idle_is_healthy:
            return Response(status_code=200)
        return native_error(f"not serving (engine {why}); requests wait up to {engine.held_timeout:g} s", 503)
    ok = await _probe(state, state.args.health_check_timeout)
    return Response(status_code=200 if ok else 503)


@router.get("/ready")
async def ready(request: Request) -> Response:
    return Response(status_code=200 if state_of(request).ready else 503)


@router.get("/ping")
async def ping() -> Response:
    return Response(status_code=200)


def model_info(state: ServerState) -> dict:
    engine = state.engine.engine
    config = engine.hf_config
    return {
        "model_path": state.args.model, "served_model_name": state.args.model_name,
        "tokenizer_path": state.args.model, "is_generation": True, "preferred_sampling_params": None,
        "weight_version": state.engine.weight_version, "load_format": state.args.load_format,
        "reasoning_parser": None,
        "tool_call_parser": "qwen25", "disaggregation_mode": "null", "has_image_understanding": False,
        "has_audio_understanding": False, "model_type": getattr(config, "model_type", None),
        "architectures": list(getattr(config, "architectures", None) or []),
    }


@router.get("/model_info")
@router.get("/get_model_info")
async def get_model_info(request: Request) -> Response:
    return json_response(model_info(state_of(request)))


@router.get("/server_info")
@router.get("/get_server_info")
async def get_server_info(request: Request) -> Response:
    """Every server argument, the engine's limits and load, in SGLang's flat layout."""
    state = state_of(request)
    args = state.args
    stats = state.engine.stats
    runner = getattr(state.engine.engine, "model_runner", None)
    core = core_load(stats, state.block_size, state.max_running_requests, state.metrics)
    info = {k: v for k, v in vars(args).items() if k != "api_key"}
    info.update(
        model_path=args.model, served_model_name=args.model_name, tokenizer_path=args.model, tp_size=state.tp_size,
        dp_size=1,
        context_length=state.context_len, max_req_input_len=state.context_len - 1,
        max_total_num_tokens=core["max_total_num_tokens"], max_total_tokens=core["max_total_num_tokens"],
        max_running_requests=state.max_running_requests, max_prefill_tokens=getattr(state.engine.engine.args, "max_num_batched_tokens", None),
        block_size=state.block_size, disable_radix_cache=not state.prefix_caching,
        weight_version=state.engine.weight_version, version=temper.__version__, engine="temper", frontend="python",
        startup_time=state.started_at, paused=state.engine.paused, released_memory=sorted(state.engine.released),
        cuda_ipc_buffers_mapped=state.ipc_buffers.opened,
        engine_kernels=sorted(getattr(runner, "kernel_groups", ())) or ["PyTorch reference"],
        decode_cuda_graphs=getattr(runner, "graphs", None) is not None,
        decode_tile=getattr(getattr(runner, "attention_backend", None), "decode_config", None),
        num_kv_blocks=getattr(runner, "num_kv_blocks", None), max_model_len=state.engine.engine.max_model_len,
        internal_states=[{"last_gen_throughput": core["gen_throughput"],
                          "effective_max_running_requests_per_dp": state.max_running_requests,
                          "num_running_reqs": core["num_running_reqs"], "num_waiting_reqs": core["num_waiting_reqs"]}],
    )
    return json_response(info)


@router.get("/get_weight_version")
@router.get("/weight_version")
async def get_weight_version(request: Request) -> Response:
    return json_response({"weight_version": state_of(request).engine.weight_version})


@router.get("/v1/loads")
async def v1_loads(request: Request, include: str | None = None, format: str = "json", dp_rank: int | None = None) -> Response:
    """SGLang's load report: ``loads`` has one entry (DP rank 0) with the core fields plus the sections
    in ``include`` (default all); ``format=prometheus`` gives the core fields as gauges."""
    state = state_of(request)
    try:
        sections = parse_include(include)
        if format not in ("json", "prometheus"):
            raise RequestError(f"format: expected 'json' or 'prometheus', got {format!r}")
    except RequestError as e:
        return native_error(str(e))
    core = core_load(state.engine.stats, state.block_size, state.max_running_requests, state.metrics)
    if format == "prometheus":
        return PlainTextResponse(loads_prometheus(core))
    loads = [] if dp_rank not in (None, 0) else [load_entry(core, state.engine.stats, sections)]
    return json_response({"timestamp": core["timestamp"], "version": temper.__version__, "accelerator": _accelerator(),
                          "num_accelerators": state.tp_size, "loads": loads})


@router.get("/get_load")
async def get_load(request: Request) -> Response:
    state = state_of(request)
    core = core_load(state.engine.stats, state.block_size, state.max_running_requests, state.metrics)
    return json_response([{"dp_rank": 0, "num_reqs": core["num_running_reqs"], "num_waiting_reqs": core["num_waiting_reqs"],
                           "num_tokens": core["num_used_tokens"], "ts_tic": time.time()}])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = state_of(request)
    core = core_load(state.engine.stats, state.block_size, state.max_running_requests, state.metrics)
    text = prometheus_text(core, state.metrics, state.args.model_name, state.engine.weight_version)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _accelerator() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None
