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

Run it: ``python -m temper.rollout.router --workers URL [URL ...] --port N``; in-process (tests,
`RolloutManager`) with `RouterThread`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from temper.rollout.engine_client import ROUTING_KEY_HEADER
from temper.rollout.routing_policy import NoWorkerError, RoutingPolicy, Worker
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
    ) -> None:
        self.policy = RoutingPolicy()
        self.initial_workers = [u.rstrip("/") for u in worker_urls]
        self.health_check_interval = health_check_interval
        self.health_check_timeout = health_check_timeout
        self.worker_startup_timeout = worker_startup_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.http: httpx.AsyncClient | None = None
        self.app = self._build_app()

    # ---- workers ---------------------------------------------------------------------------------

    async def register(self, url: str) -> Worker:
        """Health-check `url` until it answers 2xx (up to `worker_startup_timeout` s), then route to it;
        ValueError if it never does."""
        url = await self._wait_healthy(url)
        logger.info("router: worker %s registered", url)
        return self.policy.add(url)

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

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_check_interval)
            for url in self.policy.urls():
                if await self._healthy(url):
                    self.policy.mark_healthy(url)
                else:
                    self.policy.mark_failed(url)

    # ---- forwarding ------------------------------------------------------------------------------

    async def forward(self, request: Request, path: str) -> Response:
        """Send the request body to the chosen worker; on a refused connection try the next worker."""
        body = await request.body()
        parsed = _json_or_none(body)
        key = request.headers.get(ROUTING_KEY_HEADER) or _session_id(parsed)
        stream = isinstance(parsed, dict) and parsed.get("stream") is True
        tried: list[str] = []
        while True:
            try:
                worker = self.policy.choose(key, exclude=tried)
            except NoWorkerError as e:
                return _error(503, str(e))
            try:
                return await self._send(worker, request, path, body, stream)
            except httpx.ConnectError as e:
                logger.warning("router: worker %s refused the connection (%s); marked unhealthy", worker.url, e)
                self.policy.mark_failed(worker.url, at_once=True)
                tried.append(worker.url)

    async def _send(self, worker: Worker, request: Request, path: str, body: bytes, stream: bool) -> Response:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        if "authorization" in request.headers:  # engines started with --api-key
            headers["authorization"] = request.headers["authorization"]
        upstream = self.http.build_request(request.method, f"{worker.url}{path}", content=body, headers=headers)
        self.policy.started(worker)
        try:
            response = await self.http.send(upstream, stream=True)
        except BaseException:
            self.policy.finished(worker)
            raise
        out_headers = {WORKER_HEADER: worker.url}
        media_type = response.headers.get("content-type")
        if stream and response.status_code < 400:
            return StreamingResponse(self._relay(worker, response), response.status_code, out_headers, media_type)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
            self.policy.finished(worker)
        return Response(content, response.status_code, out_headers, media_type)

    async def _relay(self, worker: Worker, response: httpx.Response) -> AsyncIterator[bytes]:
        # Runs until the stream ends or the client goes away; closing upstream lets the engine abort.
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()
            self.policy.finished(worker)

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
            self.http = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
            health = None
            try:
                for url in await asyncio.gather(*(self._wait_healthy(u) for u in self.initial_workers)):
                    self.policy.add(url)  # in the given order, whichever answered first
                health = asyncio.create_task(self._health_loop())
                yield
            finally:
                if health is not None:
                    health.cancel()
                await self.http.aclose()

        app = FastAPI(title="temper router", lifespan=lifespan)
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
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = Router(
        args.workers,
        health_check_interval=args.health_check_interval,
        health_check_timeout=args.health_check_timeout,
        worker_startup_timeout=args.worker_startup_timeout,
        request_timeout=args.request_timeout,
    )
    logger.info("temper router on http://%s:%d over %s", args.host, args.port, args.workers)
    uvicorn.run(router.app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
