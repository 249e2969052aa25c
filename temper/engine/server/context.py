"""`ServerState` (what every route needs) and the small HTTP helpers the route modules share."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from temper.engine.server.async_engine import AsyncEngine
from temper.engine.server.cuda_ipc import MappedBuffers
from temper.engine.server.generation import TokenTexts
from temper.engine.server.metrics import ServerMetrics
from temper.engine.server.protocol import RequestError
from temper.engine.server.server_args import ServerArgs


@dataclasses.dataclass
class ServerState:
    """The engine and settings behind one FastAPI app (``app.state.server``)."""

    engine: AsyncEngine
    args: ServerArgs
    context_len: int  # max prompt + output tokens of one request
    metrics: ServerMetrics = dataclasses.field(default_factory=ServerMetrics)
    groups: dict[str, Any] = dataclasses.field(default_factory=dict)  # weight_update.BroadcastGroup by name
    ipc_buffers: MappedBuffers = dataclasses.field(default_factory=MappedBuffers)  # trainers' CUDA IPC buffers
    ready: bool = False  # /health answers 503 until the warmup generation finished
    started_at: float = dataclasses.field(default_factory=time.time)
    token_texts: TokenTexts | None = None

    def __post_init__(self) -> None:
        self.token_texts = TokenTexts(self.engine.tokenizer)

    def observe(self, sub: Any, out: Any) -> None:
        """Count a finished engine request in the metrics."""
        self.metrics.observe_finished(out, time.perf_counter() - sub.received)

    @property
    def block_size(self) -> int:
        return int(getattr(self.engine.engine.args, "block_size", 1))

    @property
    def max_running_requests(self) -> int:
        return int(getattr(self.engine.engine.args, "max_num_seqs", 0))

    @property
    def tp_size(self) -> int:
        return int(getattr(self.engine.engine.args, "tensor_parallel_size", 1))

    @property
    def prefix_caching(self) -> bool:
        return bool(getattr(self.engine.engine.args, "enable_prefix_caching", True))


def context_length(engine: Any) -> int:
    """The engine's context length: its resolved max_model_len, else the model's position limit."""
    for value in (getattr(engine, "max_model_len", None), getattr(engine.args, "max_model_len", None)):
        if value:
            return int(value)
    return int(engine.hf_config.max_position_embeddings)


def state_of(request: Request) -> ServerState:
    return request.app.state.server


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(obj: Any) -> str:
    """Compact JSON (orjson: a rollout's answers, 64 x 512 log-probs, in a tenth of `json.dumps`'s time).
    As in SGLang's server, a non-finite float is written as null."""
    return dumps_bytes(obj).decode()


def dumps_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_ORJSON_OPTIONS)


def json_response(obj: Any, status_code: int = 200) -> Response:
    return Response(content=dumps_bytes(obj), status_code=status_code, media_type="application/json")


def native_error(message: str, status_code: int = 400) -> Response:
    """SGLang's native error body ``{"error": {"message": ...}}``."""
    return json_response({"error": {"message": message}}, status_code)


class BodyTooLarge(Exception):
    """A request body over the server's `max_request_bytes` (HTTP 413). Not a ValueError, so the routes'
    400 handlers let it through to the app's handler."""


async def json_body(request: Request) -> Any:
    """The request body as JSON; an empty body is ``{}``. RequestError for malformed JSON, BodyTooLarge
    for a body over the server's limit (checked on Content-Length first, then while reading)."""
    limit = state_of(request).args.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {int(declared)} bytes is over this server's limit of {limit} bytes "
                           "(--max-request-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over this server's limit of {limit} bytes (--max-request-bytes)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"body: invalid JSON ({e})") from None


DISCONNECT_POLL_S = 1.0


async def until_disconnected(request: Request, work: Any, on_disconnect: Any) -> Any:
    """Await the coroutine `work`, polling for a client disconnect; on one, call `on_disconnect()`
    (which must end the work, e.g. abort its requests) and return None."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                on_disconnect()
                return None
    finally:
        if not task.done():
            task.cancel()
