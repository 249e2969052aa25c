"""HTTP helpers for the server tests: start a real engine server on 127.0.0.1, parse SSE, sampling presets.

A plain module (not conftest) so test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import json
import time

import httpx

from temper.engine.server import ServerArgs, ServerThread

TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def start_server(model: str, **overrides) -> ServerThread:
    """A started server for checkpoint folder `model` (stop it when done)."""
    args = ServerArgs(**{"model": str(model), "host": "127.0.0.1", "port": 0, "log_level": "warning", **overrides})
    return ServerThread(args).start()


def sse_events(response: httpx.Response) -> list:
    """The JSON objects of an SSE body (``[DONE]`` checked and dropped)."""
    events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def greedy(max_new_tokens: int, **extra) -> dict:
    return {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True, **extra}


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
