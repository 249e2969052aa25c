"""`EngineClient`: the async HTTP client of one endpoint that speaks SGLang's API (an engine or a router).

Everything the rollout side asks of engines goes through here (SGLANG_API.md): `/generate`,
`/abort_request`, `/health`, `/v1/loads`, `/flush_cache`, `/get_weight_version`, and a router's
`/workers`. Contract:

- one `httpx.AsyncClient` per client, with a connection pool sized to the caller's concurrency and
  no read timeout by default (a long generation is not an error);
- connection-level failures (refused, reset, dropped before a response) are retried with
  exponential backoff; an HTTP error status is never retried: it raises `EngineError` at once;
- every error names the URL it came from and the server's message.

The client binds to the event loop it is first used on (httpx's rule); the rollout side uses it
only on the rollout loop (`async_loop`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson

logger = logging.getLogger(__name__)

# Failures where the request did not complete at the transport level; safe to send again.
RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
ROUTING_KEY_HEADER = "X-Routing-Key"
_CLIENT_TIMEOUT = object()  # request(): keep the client's read timeout
ABORT_TIMEOUT_S = 10.0


class EngineError(RuntimeError):
    """An engine or router answered with an error status, or could not be reached."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {message}" if status is None else f"{url}: HTTP {status}: {message}")
        self.url = url
        self.status = status


class EngineClient:
    """Async client of `base_url` (``http://host:port``), an engine server or a router in front of some.

    `max_connections` should be at least the number of requests the caller keeps in flight.
    `timeout` (seconds, None = none) bounds each request's wait for its response; connecting is
    always bounded by `connect_timeout`. `retries` connection failures are retried per request,
    sleeping `backoff`, 2·`backoff`, ... (at most `max_backoff`) in between.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 512,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            trust_env=False,  # engines are cluster-internal: never send their traffic through a proxy
            # plain HTTP needs no certificates: loading the CA bundle costs ~80 ms a client (seen on the CPU
            # machine), paid twice a rollout by the engine-counter clients
            verify=not self.base_url.startswith("http://"),
        )

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, timeout: Any = _CLIENT_TIMEOUT, **kwargs: Any) -> httpx.Response:
        """Send one request, retrying connection failures; EngineError for an error status or when
        the retries run out. `timeout` (seconds or None) overrides the client's read timeout."""
        if timeout is not _CLIENT_TIMEOUT:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=self._http.timeout.connect)
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
                break
            except RETRYABLE as e:
                if attempt == self.retries:
                    raise EngineError(url, f"unreachable after {attempt + 1} attempts ({type(e).__name__}: {e})") from e
                delay = min(self.backoff * 2**attempt, self.max_backoff)
                logger.warning("%s %s: %s; retrying in %.1fs", method, url, type(e).__name__, delay)
                await asyncio.sleep(delay)
            except httpx.TimeoutException as e:
                raise EngineError(url, f"timed out ({type(e).__name__})") from e
        if response.status_code >= 400:
            raise EngineError(url, _error_message(response), response.status_code)
        return response

    async def generate(self, payload: dict[str, Any], *, routing_key: str | None = None) -> dict[str, Any]:
        """POST `/generate` (non-streaming) and return the response object (or list, for batches).

        `routing_key` goes in the `X-Routing-Key` header: temper's router sends all requests with
        one key to one engine (so a group's samples share its prefix cache); engines ignore it.
        """
        headers = {ROUTING_KEY_HEADER: routing_key} if routing_key else None
        response = await self.request("POST", "/generate", json=payload, headers=headers)
        return orjson.loads(response.content)  # a tenth of json.loads's time on a rollout's log-probs

    async def abort_all(self, timeout: float = ABORT_TIMEOUT_S) -> None:
        """Abort every request the endpoint is running or queueing (`/abort_request` abort_all); an engine
        that does not answer within `timeout` seconds is stuck (an abort only marks requests)."""
        await self.request("POST", "/abort_request", json={"abort_all": True}, timeout=timeout)

    async def health(self, timeout: float = 5.0) -> bool:
        """Whether `/health` answers 2xx within `timeout` seconds (never raises)."""
        try:
            response = await self._http.get("/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.is_success

    async def loads(self) -> list[dict[str, Any]]:
        """`/v1/loads?include=core`: one dict per DP rank (num_running_reqs, num_waiting_reqs, ...)."""
        return load_entries((await self.request("GET", "/v1/loads", params={"include": "core"}, timeout=30.0)).json())

    async def num_requests(self) -> int:
        """Requests running or waiting on the endpoint, summed over its DP ranks."""
        return sum(int(e.get("num_running_reqs", 0)) + int(e.get("num_waiting_reqs", 0)) for e in await self.loads())

    async def flush_cache(self) -> bool:
        """POST `/flush_cache`; False when the engine refused (requests still running), True when flushed."""
        try:
            await self.request("POST", "/flush_cache", timeout=60.0)
        except EngineError as e:
            if e.status == 400:
                return False
            raise
        return True

    async def get_weight_version(self) -> str:
        """The weight version the endpoint serves (`/get_weight_version`)."""
        return str((await self.request("GET", "/get_weight_version", timeout=30.0)).json()["weight_version"])

    async def workers(self) -> list[str]:
        """The engine URLs behind a router (`GET /workers`; `/list_workers` for older routers)."""
        try:
            body = (await self.request("GET", "/workers", timeout=30.0)).json()
        except EngineError as e:
            if e.status != 404:
                raise
            body = (await self.request("GET", "/list_workers", timeout=30.0)).json()
        if isinstance(body, dict) and "workers" in body:
            return [w["url"] if isinstance(w, dict) else str(w) for w in body["workers"]]
        return list(body.get("urls", [])) if isinstance(body, dict) else [str(u) for u in body]


def load_entries(body: Any) -> list[dict[str, Any]]:
    """The per-DP-rank dicts of a ``/v1/loads`` answer (``{"loads": [...]}``, one dict, or a list)."""
    if isinstance(body, dict) and isinstance(body.get("loads"), list):
        return body["loads"]
    return [body] if isinstance(body, dict) else list(body)


def _error_message(response: httpx.Response) -> str:
    """The server's message from SGLang's error shapes ({"error": {"message"}}, {"error": str},
    {"message"}, FastAPI's {"detail"}), else the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]
