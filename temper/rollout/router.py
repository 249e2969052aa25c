"""temper's built-in router: one HTTP endpoint in front of N engine servers (SGLANG_API.md §6).

Forwards ``/generate``, ``/v1/completions`` and ``/v1/chat/completions`` bodies unchanged (SSE
streams are passed through as they arrive) to the engine `RoutingPolicy` picks: least outstanding
requests, with affinity for a routing key — the ``X-Routing-Key`` header or a string ``session_id``
in the body — so that the samples of one prompt group share an engine's prefix cache.

Admin: ``GET /workers`` (list with counters), ``POST /workers {"url"}`` and ``POST /add_worker?url=``
(register after a health check), ``POST /remove_worker?url=``, ``GET /list_workers``, ``GET /health``
(200 while a worker is healthy), ``/flush_cache`` and ``/abort_request`` (sent to every worker),
``GET /v1/loads`` (every worker's entries), and info routes answered by one healthy worker
(``/v1/models``, ``/model_info``, ``/server_info``, ``/get_weight_version`` and their aliases).

A worker that refuses a connection is marked unhealthy at once and the request goes to another; a
background loop health-checks every worker every `health_check_interval` seconds (unhealthy after 3
failures in a row, healthy again after one success; an engine's /health runs a one-token generation,
hence the generous `health_check_timeout`). Unhealthy workers are skipped while a healthy one is left.
A worker that fails with a request in flight (the connection dropped: the engine died; or no answer
within `request_timeout`) fails that request with a 502 (504) naming the worker and what
`describe_worker` says of it.

Fault tolerance (`fault_tolerant`, the driver's --use-fault-tolerance): health checks are real
generations (``/health_generate``; an engine that answers it is paused or has released its memory is
alive), every worker checked at once, starting `health_check_first_wait` seconds after it registered.
A worker that fails one check, refuses a connection, drops a request or lets one pass
`request_timeout` is taken out of the router at once (`on_worker_failed(url, reason)` is told): the
requests in flight on it are cancelled and sent again, whole, to another worker (a request's partial
output is discarded, so no sample is counted twice; a stream whose first bytes reached the client is
not sent again: the client sees it end). While no worker is left, requests wait up to
`worker_startup_timeout` seconds for one to be added (a restarted engine registers through
``/add_worker``).

Access: with `api_key`, every route but ``/health`` needs ``Authorization: Bearer KEY`` (401);
`worker_api_key` is sent to the engines on every call (engines started with ``--api-key``; a run whose
engines listen on other nodes gives them a per-run key). A router that listens beyond loopback
without `api_key` does not start: anyone who reaches its port could add or remove workers.

Run it: ``python -m temper.rollout.router --workers URL [URL ...] --port N``; in-process (tests,
`RolloutManager`) with `RouterThread`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from temper.rollout.engine_client import ROUTING_KEY_HEADER
from temper.rollout.routing_policy import NoWorkerError, RoutingPolicy, Worker
from temper.rollout.upstream_pool import UpstreamPool
from temper.uvicorn_thread import UvicornThread

logger = logging.getLogger(__name__)

FORWARDED_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
INFO_ROUTES = (
    "/v1/models",
    "/model_info",
    "/get_model_info",
    "/server_info",
    "/get_server_info",
    "/get_weight_version",
)
WORKER_HEADER = "X-Temper-Worker"  # on every forwarded response: which engine served it
MAX_ATTEMPTS = 5  # fault tolerance: a request goes to at most this many workers before it fails
DEAD = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)  # the connection broke mid-request


class WorkerGone(Exception):
    """The worker a request was in flight on was taken out of the router (fault tolerance)."""


class Router:
    """The router's state (workers, policy, HTTP client) and its FastAPI app (`app`)."""

    def __init__(
        self,
        worker_urls: Sequence[str] = (),
        *,
        health_check_interval: float = 10.0,
        health_check_timeout: float = 20.0,
        worker_startup_timeout: float = 300.0,
        request_timeout: float | None = None,
        max_connections: int = 4096,
        fault_tolerant: bool = False,
        health_check_first_wait: float = 0.0,
        api_key: str | None = None,
        worker_api_key: str | None = None,
    ) -> None:
        self.policy = RoutingPolicy()
        self.initial_workers = [u.rstrip("/") for u in worker_urls]
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self.fault_tolerant = fault_tolerant
        self.health_check_first_wait = health_check_first_wait
        self.on_worker_failed: Callable[[str, str], None] | None = None
        """Told (url, reason) when a worker is taken out (fault tolerance); runs on the router's loop."""
        self.describe_worker: Callable[[str], str] = lambda url: ""
        """More words on a worker for the errors that name it (the driver adds the engine's last log lines)."""
        self._gone: dict[str, asyncio.Event] = {}  # set when the worker is taken out (fault tolerance)
        self._checked_from: dict[str, float] = {}  # when each worker's health checks start
        self.worker_startup_timeout = worker_startup_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.api_key = api_key
        self.worker_api_key = worker_api_key
        self.http: httpx.AsyncClient | None = None  # health checks, admin and info calls
        self.upstream: UpstreamPool | None = None  # forwarded requests (upstream_pool.py says why apart)
        self.app = self._build_app()

    # ---- workers ---------------------------------------------------------------------------------

    async def register(self, url: str) -> Worker:
        """Health-check `url` until it answers 2xx (up to `worker_startup_timeout` s), then route to it;
        ValueError if it never does."""
        url = await self._wait_healthy(url)
        logger.info("router: worker %s registered", url)
        return self._add(url)

    def _add(self, url: str) -> Worker:
        self._checked_from[url] = time.monotonic() + self.health_check_first_wait
        return self.policy.add(url)

    def take_out(self, url: str, reason: str) -> None:
        """Fault tolerance: stop routing to `url` now, send its requests in flight elsewhere, tell the listener."""
        if not self.policy.remove(url):
            return
        logger.warning("router: engine %s taken out: %s", url, reason)
        self._checked_from.pop(url, None)
        if (gone := self._gone.pop(url, None)) is not None:
            gone.set()
        if self.on_worker_failed is not None:
            self.on_worker_failed(url, reason)

    async def _wait_healthy(self, url: str) -> str:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"worker url {url!r} must start with http:// or https://")
        deadline = time.monotonic() + self.worker_startup_timeout
        while not await self._healthy(url):
            if time.monotonic() >= deadline:
                raise ValueError(f"worker {url} did not answer GET /health with 2xx; is the engine running?")
            await asyncio.sleep(0.5)
        return url

    async def _healthy(self, url: str) -> bool:
        try:
            return (await self.http.get(f"{url}/health", timeout=self.health_check_timeout)).is_success
        except httpx.HTTPError:
            return False

    async def _check(self, url: str) -> str | None:
        """Fault tolerance's health check: None if `url` generated (or is paused or released by choice),
        else why not."""
        try:
            response = await self.http.get(f"{url}/health_generate", timeout=self.health_check_timeout)
        except httpx.TimeoutException:
            return f"its health check (a generation) got no answer within {self.health_check_timeout:g} s"
        except httpx.HTTPError as e:
            return f"its health check failed: {type(e).__name__}: {e}"
        if response.is_success or (response.status_code == 503 and "not serving" in response.text):
            return None
        return f"its health check (a generation) answered HTTP {response.status_code}: {response.text[:200]}"

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_check_interval)
            now = time.monotonic()
            urls = [u for u in self.policy.urls() if self._checked_from.get(u, 0.0) <= now]
            if self.fault_tolerant:
                for url, why in zip(urls, await asyncio.gather(*(self._check(u) for u in urls))):
                    if why is not None:
                        self.take_out(url, why)
                continue
            for url, ok in zip(urls, await asyncio.gather(*(self._healthy(u) for u in urls))):
                if ok:
                    self.policy.mark_healthy(url)
                else:
                    self.policy.mark_failed(url)

    # ---- forwarding ------------------------------------------------------------------------------

    async def forward(self, request: Request, path: str) -> Response:
        """Send the request body to the chosen worker; on a refused connection try the next worker (with
        fault tolerance, also when the worker dies or is taken out with the request in flight)."""
        body = await request.body()
        parsed = _json_or_none(body)
        key = request.headers.get(ROUTING_KEY_HEADER) or _session_id(parsed)
        stream = isinstance(parsed, dict) and parsed.get("stream") is True
        tried: list[str] = []
        while True:
            try:
                worker = await self._choose(key, tried)
            except NoWorkerError as e:
                return _error(503, str(e))
            try:
                return await self._counted(worker, request, path, body, stream)
            except httpx.ConnectError as e:
                logger.warning("router: worker %s refused the connection (%s); marked unhealthy", worker.url, e)
                self._failed(worker.url, f"it refused the connection ({e})")
            except (httpx.TimeoutException, *DEAD, WorkerGone) as e:
                reason = _why_failed(e, self.request_timeout)
                if not self.fault_tolerant:
                    self.policy.mark_failed(worker.url, at_once=True)
                    status = 504 if isinstance(e, httpx.TimeoutException) else 502
                    return _error(status, _dead_engine_message(worker.url, path, reason, self.describe_worker(worker.url)))
                logger.warning("router: %s on %s failed (%s); sending it again", path, worker.url, reason)
                self.take_out(worker.url, reason)
            tried.append(worker.url)
            if self.fault_tolerant and len(tried) >= MAX_ATTEMPTS:
                return _error(502, f"{path} failed on {len(tried)} engines in a row ({', '.join(tried)}); last: "
                                   f"{worker.url}{self.describe_worker(worker.url)}")

    def _failed(self, url: str, reason: str) -> None:
        if self.fault_tolerant:
            self.take_out(url, reason)
        else:
            self.policy.mark_failed(url, at_once=True)

    async def _choose(self, key: str | None, tried: list[str]) -> Worker:
        """The policy's worker; with fault tolerance, while none is left, wait for one to be added."""
        deadline = time.monotonic() + self.worker_startup_timeout
        while True:
            try:
                return self.policy.choose(key, exclude=tried)
            except NoWorkerError:
                if not self.fault_tolerant or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.2)

    async def _counted(self, worker: Worker, request: Request, path: str, body: bytes, stream: bool) -> Response:
        """`_send_watched`, the request counted on `worker` from the moment it was chosen (so that requests arriving
        together see each other and least-outstanding routing splits a burst) until its answer is read or, for a
        stream, relayed to its end."""
        self.policy.started(worker)
        relayed = False
        try:
            response = await self._send_watched(worker, request, path, body, stream)
            relayed = isinstance(response, StreamingResponse)  # `_relay` counts it finished
            return response
        finally:
            if not relayed:
                self.policy.finished(worker)

    async def _send_watched(self, worker: Worker, request: Request, path: str, body: bytes, stream: bool) -> Response:
        """`_send`, cancelled with WorkerGone when fault tolerance takes the worker out meanwhile."""
        if not self.fault_tolerant:
            return await self._send(worker, request, path, body, stream)
        gone = self._gone.setdefault(worker.url, asyncio.Event())
        send = asyncio.ensure_future(self._send(worker, request, path, body, stream))
        taken_out = asyncio.ensure_future(gone.wait())
        try:
            done, _ = await asyncio.wait({send, taken_out}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            taken_out.cancel()
            if not send.done():
                send.cancel()  # closes the connection: a live engine aborts the request
        if send in done:
            return send.result()
        raise WorkerGone(f"engine {worker.url} was taken out of the router with the request in flight")

    async def _send(self, worker: Worker, request: Request, path: str, body: bytes, stream: bool) -> Response:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        if self.worker_api_key is None and "authorization" in request.headers:  # the client's key for the engines
            headers["authorization"] = request.headers["authorization"]
        shard = self.upstream.acquire()
        client = self.upstream.client(shard)
        upstream = client.build_request(request.method, f"{worker.url}{path}", content=body, headers=headers)
        try:
            response = await client.send(upstream, stream=True)
        except BaseException:
            self.upstream.release(shard)
            raise
        out_headers = {WORKER_HEADER: worker.url}
        media_type = response.headers.get("content-type")
        if stream and response.status_code < 400:
            relay = self._relay(worker, shard, response)
            return StreamingResponse(relay, response.status_code, out_headers, media_type)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
            self.upstream.release(shard)
        return Response(content, response.status_code, out_headers, media_type)

    async def _relay(self, worker: Worker, shard: int, response: httpx.Response) -> AsyncIterator[bytes]:
        # Runs until the stream ends or the client goes away; closing upstream lets the engine abort.
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()
            self.policy.finished(worker)
            self.upstream.release(shard)

    async def fan_out(self, method: str, path: str, **kwargs: Any) -> list[tuple[str, httpx.Response | Exception]]:
        """The same request to every registered worker, concurrently: [(url, response or error)]."""
        urls = self.policy.urls()

        async def one(url: str) -> httpx.Response | Exception:
            try:
                return await self.http.request(method, f"{url}{path}", timeout=60.0, **kwargs)
            except httpx.HTTPError as e:
                return e

        return list(zip(urls, await asyncio.gather(*(one(u) for u in urls))))

    # ---- app -------------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            timeout = httpx.Timeout(self.request_timeout, connect=10.0)
            auth = {"Authorization": f"Bearer {self.worker_api_key}"} if self.worker_api_key else None
            self.http = httpx.AsyncClient(limits=limits, timeout=timeout, headers=auth, trust_env=False)
            self.upstream = UpstreamPool(self.max_connections, timeout=timeout, headers=auth, trust_env=False)
            health = None
            try:
                for url in await asyncio.gather(*(self._wait_healthy(u) for u in self.initial_workers)):
                    self._add(url)  # in the given order, whichever answered first
                health = asyncio.create_task(self._health_loop())
                yield
            finally:
                if health is not None:
                    health.cancel()
                await self.upstream.aclose()
                await self.http.aclose()

        app = FastAPI(title="temper router", lifespan=lifespan)
        if self.api_key is not None:
            app.add_middleware(KeyCheck, key=self.api_key)
        for path in FORWARDED_ROUTES:
            app.add_api_route(path, self._forwarder(path), methods=["POST", "PUT"] if path == "/generate" else ["POST"])
        for path in INFO_ROUTES:
            app.add_api_route(path, self._info(path), methods=["GET"])
        _add_admin_routes(app, self)
        return app

    def _forwarder(self, path: str):
        async def handler(request: Request) -> Response:
            return await self.forward(request, path)

        return handler

    def _info(self, path: str):
        async def handler() -> Response:
            for worker in self.policy.healthy():
                try:
                    response = await self.http.get(f"{worker.url}{path}", timeout=30.0)
                except httpx.HTTPError:
                    continue
                return Response(response.content, response.status_code, media_type=response.headers.get("content-type"))
            return _error(503, f"no healthy worker answered {path}")

        return handler


class KeyCheck:
    """Every route but /health needs ``Authorization: Bearer KEY`` (ASGI middleware; 401 otherwise)."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # in constant time: no key guessed byte by byte
                return await _error(401, "Unauthorized: send 'Authorization: Bearer KEY' with the router's --api-key")(
                    scope, receive, send
                )
        return await self.app(scope, receive, send)


def loopback(host: str) -> bool:
    """Whether binding `host` listens on the loopback interface only."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def check_exposure(host: str, api_key: str | None) -> None:
    """ValueError when a router would listen beyond loopback without an API key."""
    if api_key is None and not loopback(host):
        raise ValueError(
            f"the router would listen on {host} (beyond loopback) without an API key, so anyone who reaches its port "
            "could add or remove workers; start it with --api-key KEY (clients send 'Authorization: Bearer KEY'), "
            "or bind --host 127.0.0.1"
        )


def _add_admin_routes(app: FastAPI, router: Router) -> None:
    @app.get("/workers")
    async def list_workers() -> dict:
        return {"workers": [w.to_dict() for w in router.policy.workers.values()]}

    @app.get("/list_workers")
    async def list_urls() -> dict:
        return {"urls": router.policy.urls()}

    @app.post("/workers")
    async def add_worker_json(request: Request) -> Response:
        body = _json_or_none(await request.body())
        url = body.get("url") if isinstance(body, dict) else None
        return await _register_response(router, url)

    @app.post("/add_worker")
    async def add_worker_query(url: str | None = None) -> Response:
        return await _register_response(router, url)

    @app.post("/remove_worker")
    async def remove_worker(url: str) -> Response:
        if not router.policy.remove(url):
            return _error(404, f"worker {url} is not registered")
        return JSONResponse({"status": "ok", "url": url})

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        return Response(status_code=200 if router.policy.healthy() else 503)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        return _fan_out_reply(await router.fan_out("POST", "/flush_cache"), "flush_cache")

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await request.body()
        results = await router.fan_out(
            "POST", "/abort_request", content=body, headers={"content-type": "application/json"}
        )
        return _fan_out_reply(results, "abort_request")

    @app.get("/v1/loads")
    async def loads() -> Response:
        entries = []
        for url, result in await router.fan_out("GET", "/v1/loads", params={"include": "core"}):
            body = _json_or_none(result.content) if isinstance(result, httpx.Response) and result.is_success else None
            found = body.get("loads", [body]) if isinstance(body, dict) else []
            entries += [{**entry, "url": url} for entry in found]
        return JSONResponse({"loads": entries})


async def _register_response(router: Router, url: Any) -> Response:
    if not isinstance(url, str) or not url:
        return _error(400, 'give the worker as POST /workers {"url": "http://host:port"} or /add_worker?url=...')
    try:
        worker = await router.register(url)
    except ValueError as e:
        return _error(400, str(e))
    return JSONResponse({"status": "ok", "url": worker.url})


def _why_failed(error: Exception, request_timeout: float | None) -> str:
    if isinstance(error, WorkerGone):
        return str(error)
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {request_timeout:g} s (--router-request-timeout-secs; {type(error).__name__})"
    return f"the connection broke ({type(error).__name__}: {error})"


def _dead_engine_message(url: str, path: str, reason: str, notes: str) -> str:
    return (f"engine {url} failed with {path} in flight: {reason}{notes}. With --use-fault-tolerance temper takes "
            "a failed engine out of the router, sends its requests to the others and restarts it")


def _fan_out_reply(results: list[tuple[str, httpx.Response | Exception]], what: str) -> Response:
    failed = {
        url: (str(r) if isinstance(r, Exception) else f"HTTP {r.status_code}: {r.text[:200]}")
        for url, r in results
        if isinstance(r, Exception) or not r.is_success
    }
    if failed:
        return _error(400, f"{what} failed on {len(failed)} of {len(results)} workers: {failed}")
    return JSONResponse({"status": "ok", "workers": [url for url, _ in results]})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _session_id(body: Any) -> str | None:
    value = body.get("session_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


class RouterThread(UvicornThread):
    """A `Router` served by uvicorn in a daemon thread of this process; use as a context manager.

    ``port=0`` binds a free port; `url` is valid once `start()` returned (all initial workers registered).
    """

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 330.0) -> None:
        check_exposure(host, router.api_key)
        self.router = router
        config = uvicorn.Config(router.app, host=host, port=port, log_level="warning", timeout_keep_alive=60)
        super().__init__(config, name="temper-router", startup_timeout=startup_timeout)

    def _failure(self) -> str:
        return f"the router did not start (workers {self.router.initial_workers})"


def start_router(
    worker_urls: Sequence[str], host: str = "127.0.0.1", port: int = 0, **router_kwargs: Any
) -> RouterThread:
    """A started in-process router over `worker_urls` (stop it when done)."""
    return RouterThread(Router(worker_urls, **router_kwargs), host, port).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m temper.rollout.router", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", nargs="*", default=[], metavar="URL", help="engine servers (http://host:port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=30000, help="port to bind (0: any free port)")
    parser.add_argument(
        "--health-check-interval", type=float, default=10.0, help="seconds between worker health checks"
    )
    parser.add_argument("--health-check-timeout", type=float, default=20.0, help="seconds a worker's /health may take")
    parser.add_argument(
        "--worker-startup-timeout", type=float, default=300.0, help="seconds a new worker may take to become healthy"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=None, help="seconds a forwarded request may take (default: none)"
    )
    parser.add_argument("--use-fault-tolerance", action="store_true",
                        help="health checks are generations; a failed worker leaves at once and its requests in "
                             "flight are sent again, whole, to the others")
    parser.add_argument("--health-check-first-wait", type=float, default=0.0,
                        help="seconds after a worker registered before its health checks start (fault tolerance)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every route but /health (needed to listen "
                             "beyond loopback)")
    parser.add_argument("--worker-api-key", default=None,
                        help="send 'Authorization: Bearer KEY' to the workers (engines started with --api-key)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        check_exposure(args.host, args.api_key)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = Router(
        args.workers,
        health_check_interval=args.health_check_interval,
        health_check_timeout=args.health_check_timeout,
        worker_startup_timeout=args.worker_startup_timeout,
        request_timeout=args.request_timeout,
        fault_tolerant=args.use_fault_tolerance,
        health_check_first_wait=args.health_check_first_wait,
        api_key=args.api_key,
        worker_api_key=args.worker_api_key,
    )
    logger.info("temper router on http://%s:%d over %s", args.host, args.port, args.workers)
    uvicorn.run(router.app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
