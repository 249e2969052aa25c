"""`--rm-type remote_rm`: a reward model behind HTTP at `--rm-url`.

POSTs ``{"prompt", "response", "label"}`` as JSON and returns the JSON body (a number or a dict).
Connection failures, timeouts, 429 and 5xx answers are retried up to `RETRIES` times with
exponential backoff (capped at 30 s, with jitter); any other 4xx fails at once with the server's
message. One connection pool (64 connections, 120 s timeout) per event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

from temper.types import Sample

logger = logging.getLogger(__name__)

RETRIES = 10
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0

_clients: dict[int, httpx.AsyncClient] = {}


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None or client.is_closed:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        client = _clients[id(loop)] = httpx.AsyncClient(limits=limits, timeout=120.0)
    return client


async def remote_rm(args: Any, sample: Sample, response: str | None = None) -> Any:
    """The remote reward of `sample` (`response` overrides its text, e.g. the boxed_ part)."""
    url = getattr(args, "rm_url", None)
    if not url:
        raise ValueError("--rm-type remote_rm needs --rm-url (the reward server's URL)")
    payload = {
        "prompt": sample.prompt,
        "response": sample.response if response is None else response,
        "label": sample.label,
    }
    for attempt in range(RETRIES + 1):
        try:
            reply = await _client().post(url, json=payload)
            if reply.status_code < 500 and reply.status_code != 429:
                break
            problem = f"HTTP {reply.status_code}"
        except httpx.TransportError as e:
            problem = f"{type(e).__name__}: {e}"
        if attempt == RETRIES:
            raise RuntimeError(f"remote reward model {url}: failed {RETRIES + 1} times, last: {problem}")
        delay = min(BACKOFF_S * 2**attempt, MAX_BACKOFF_S) * (0.5 + random.random() / 2)
        logger.warning("remote reward model %s: %s; retry %d in %.1fs", url, problem, attempt + 1, delay)
        await asyncio.sleep(delay)
    if reply.status_code >= 400:
        raise RuntimeError(f"remote reward model {url}: HTTP {reply.status_code}: {reply.text[:300]}")
    return reply.json()
