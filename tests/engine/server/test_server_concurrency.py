"""1,000 concurrent ``/generate`` requests against one server all complete correctly."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

NUM_REQUESTS = 1000
MAX_NEW_TOKENS = 8
# httpx's pool slows down sharply with hundreds of requests queued on one client; 50 clients of 20
# connections each keep all 1,000 requests in flight at once without that client-side cost.
NUM_CLIENTS = 50


async def _fire(url: str) -> list[dict]:
    rng = random.Random(0)
    per_client = NUM_REQUESTS // NUM_CLIENTS
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(180.0, connect=60.0))
               for _ in range(NUM_CLIENTS)]

    async def one(i: int) -> dict:
        prompt = [rng.randrange(1000) for _ in range(rng.randint(3, 24))]
        body = {"input_ids": prompt, "rid": f"load-{i}", "sampling_params":
                {"max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True, "temperature": 0.7}}
        r = await clients[i % NUM_CLIENTS].post("/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json() | {"sent_prompt_len": len(prompt)}

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(NUM_REQUESTS))), timeout=240)
    finally:
        for client in clients:
            await client.aclose()


async def _fire_and_watch(served) -> tuple[list[dict], int]:
    """Fire the load while sampling how many requests the server holds at once."""
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, served.state.engine.stats.get("num_in_flight", 0))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        return await _fire(served.url), peak
    finally:
        watcher.cancel()


@pytest.mark.slow
def test_one_thousand_concurrent_requests(served):
    start = time.monotonic()
    results, peak = asyncio.run(_fire_and_watch(served))
    elapsed = time.monotonic() - start
    assert len(results) == NUM_REQUESTS
    assert sorted(r["meta_info"]["id"] for r in results) == sorted(f"load-{i}" for i in range(NUM_REQUESTS))
    for r in results:
        meta = r["meta_info"]
        assert meta["completion_tokens"] == MAX_NEW_TOKENS == len(r["output_ids"])
        assert meta["finish_reason"] == {"type": "length", "length": MAX_NEW_TOKENS}
        assert meta["prompt_tokens"] == r["sent_prompt_len"]
    assert served.state.engine.stats["num_in_flight"] == 0
    # More requests in flight than the engine runs at once (256): the rest queue and still finish.
    assert peak > 256, peak
    print(f"{NUM_REQUESTS} requests in {elapsed:.1f}s, peak {peak} in flight")
