"""One process-wide asyncio loop, in a daemon thread, on which every rollout coroutine runs.

The rollout side is synchronous to its callers (`generate_rollout(args, ...)` returns samples, as in
slime) and asynchronous inside (hundreds of HTTP requests in flight). One long-lived loop lets the
HTTP connection pool, the concurrency semaphore and the abort flag live across rollouts, and lets
callers that already run an event loop (Ray async actors, notebooks) call in, which `asyncio.run`
would refuse.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The rollout loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_serve, args=(_loop,), name="temper-rollout-loop", daemon=True)
            _thread.start()
        return _loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def in_rollout_loop() -> bool:
    """Whether the caller runs on the rollout loop's thread."""
    return _thread is not None and threading.current_thread() is _thread


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the rollout loop and wait for its result (its exception is re-raised here).

    Must not be called from the rollout loop itself (that would wait on itself): await instead.
    On timeout or interrupt the coroutine is cancelled.
    """
    if in_rollout_loop():
        coro.close()
        raise RuntimeError("temper.rollout.async_loop.run() called on the rollout loop; await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise
