"""Starting a server: `build_state` (engine + settings), `run_server` (blocking, for the CLI) and
`ServerThread` (uvicorn in a background thread of this process, for tests and in-process use)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Self

import uvicorn

from temper.engine.server.app import create_app
from temper.engine.server.async_engine import AsyncEngine
from temper.engine.server.context import ServerState, context_length
from temper.engine.server.server_args import ServerArgs

logger = logging.getLogger(__name__)


def build_state(args: ServerArgs, engine: Any = None) -> ServerState:
    """The `ServerState` for `args`, building the `LLMEngine` unless one is given."""
    if engine is None:
        from temper.engine import LLMEngine

        engine = LLMEngine(args.engine_args())
    return ServerState(engine=AsyncEngine(engine), args=args, context_len=context_length(engine))


def _uvicorn_config(state: ServerState) -> uvicorn.Config:
    return uvicorn.Config(create_app(state), host=state.args.host, port=state.args.port,
                          log_level=state.args.log_level, access_log=state.args.log_level == "debug",
                          timeout_keep_alive=30, backlog=4096, timeout_graceful_shutdown=5)


def run_server(args: ServerArgs) -> None:
    """Build the engine and serve until interrupted (``temper serve``)."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = build_state(args)
    logger.info("temper engine serving %s on http://%s:%d", args.model_name, args.host, args.port)
    uvicorn.Server(_uvicorn_config(state)).run()


class ServerThread:
    """A server running in a daemon thread of this process; use as a context manager.

    ``port=0`` in `args` binds a free port; `url` is known once `start()` returned (the app is then
    warmed up and ready). `stop()` shuts uvicorn and the engine loop down.
    """

    def __init__(self, args: ServerArgs, engine: Any = None, startup_timeout: float = 120.0):
        self.state = build_state(args, engine)
        self.server = uvicorn.Server(_uvicorn_config(self.state))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.startup_timeout = startup_timeout
        self._thread = threading.Thread(target=self._serve, name="temper-server", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as e:  # noqa: BLE001 -- reported by start()
            self._error = e

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.state.args.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            self.stop()
            raise RuntimeError(f"the engine server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
