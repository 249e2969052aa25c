"""An ASGI app served by uvicorn in a daemon thread of this process: in-process servers for tests and drivers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Self

import uvicorn


class UvicornThread:
    """Serve `config.app` in a daemon thread; use as a context manager.

    ``port=0`` in the config binds a free port; `url` is valid once `start()` returned. Subclasses name
    what failed in `_failure()` (the start error is appended).
    """

    def __init__(self, config: uvicorn.Config, *, name: str, startup_timeout: float) -> None:
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.host = config.host
        self.startup_timeout = startup_timeout
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as e:  # noqa: BLE001 -- reported by start()
            self._error = e

    def _failure(self) -> str:
        return f"{self._thread.name} did not start"

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving (no-op when already started) and wait until uvicorn reports it is up."""
        if self._thread.is_alive():
            return self
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            self.stop()
            raise RuntimeError(f"{self._failure()}: {self._error!r}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
