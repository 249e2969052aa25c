"""Starting a server: `build_state` (engine + settings), `run_server` (blocking, for the CLI) and
`ServerThread` (uvicorn in a background thread of this process, for tests and in-process use)."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from temper.engine.server.app import create_app
from temper.engine.server.async_engine import AsyncEngine
from temper.engine.server.context import ServerState, context_length
from temper.engine.server.server_args import ServerArgs
from temper.uvicorn_thread import UvicornThread

logger = logging.getLogger(__name__)


def build_state(args: ServerArgs, engine: Any = None) -> ServerState:
    """The `ServerState` for `args`, building the `LLMEngine` unless one is given."""
    if engine is None:
        from temper.engine import LLMEngine

        engine = LLMEngine(args.engine_args())
    return ServerState(engine=AsyncEngine(engine, held_timeout=args.held_request_timeout,
                                                   burst_quiet_s=args.burst_wait_ms / 1e3,
                                                   burst_max_s=args.burst_max_wait_ms / 1e3), args=args,
                       context_len=context_length(engine))


def _uvicorn_config(state: ServerState) -> uvicorn.Config:
    return uvicorn.Config(create_app(state), host=state.args.host, port=state.args.port,
                          log_level=state.args.log_level, access_log=state.args.log_level == "debug",
                          timeout_keep_alive=30, backlog=4096, timeout_graceful_shutdown=5)


def run_server(args: ServerArgs) -> None:
    """Build the engine and serve until interrupted (``temper serve``)."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = build_state(args)
    logger.info("temper engine serving %s on http://%s:%d", args.model_name, args.host, args.port)
    if not args.control_open and args.api_key is None:
        logger.warning("listening on %s (beyond loopback) without --api-key: generation is open to anyone who reaches "
                       "the port, and the weight, memory and control routes answer 403 until the server is started "
                       "with --api-key KEY", args.host)
    uvicorn.Server(_uvicorn_config(state)).run()


class ServerThread(UvicornThread):
    """An engine server running in a daemon thread of this process; use as a context manager.

    ``port=0`` in `args` binds a free port; `url` is known once `start()` returned (the app is then
    warmed up and ready). `stop()` shuts uvicorn and the engine loop down.
    """

    def __init__(self, args: ServerArgs, engine: Any = None, startup_timeout: float = 120.0):
        self.state = build_state(args, engine)
        super().__init__(_uvicorn_config(self.state), name="temper-server", startup_timeout=startup_timeout)

    def _failure(self) -> str:
        return "the engine server did not start"
