"""An idle engine gathers a burst of requests before its first step (`AsyncEngine._gather_burst`).

A rollout's requests reach the server one by one; an engine that stepped on the first one would
prefill the batch in many small steps. Requests sent 20 ms apart: with a 300 ms quiet gap the engine
prefills all of them in one step; with the gap off it steps on the first arrival.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from server_helpers import TIMEOUT, greedy, start_server

NUM_REQUESTS = 6
SPACING_S = 0.02


def _send_spaced(url: str) -> list[dict]:
    """NUM_REQUESTS /generate calls, each started SPACING_S after the previous; their answers."""
    answers: list[dict | None] = [None] * NUM_REQUESTS

    def one(i: int) -> None:
        body = {"input_ids": [7 + i, 11, 13, 17 + i, 19], "rid": f"burst-{i}", "sampling_params": greedy(3)}
        r = httpx.post(f"{url}/generate", json=body, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        answers[i] = r.json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(NUM_REQUESTS)]
    for t in threads:
        t.start()
        time.sleep(SPACING_S)
    for t in threads:
        t.join(60)
    assert all(a is not None for a in answers)
    return answers


def _prefill_steps(server) -> int:
    return int(server.state.engine.engine.stats()["prefill_steps"])


@pytest.mark.parametrize("wait_ms, one_prefill", [(300.0, True), (0.0, False)])
def test_an_idle_engine_prefills_a_burst_together(model_dir, wait_ms, one_prefill):
    server = start_server(model_dir("qwen3", seed=0), burst_wait_ms=wait_ms, burst_max_wait_ms=5000.0)
    try:
        before = _prefill_steps(server)
        answers = _send_spaced(server.url)
        steps = _prefill_steps(server) - before
    finally:
        server.stop()
    assert all(len(a["output_ids"]) == 3 for a in answers)
    if one_prefill:
        assert steps == 1, f"{steps} prefill steps for a burst of {NUM_REQUESTS} requests"
    else:
        assert steps > 1


def test_the_burst_wait_is_bounded_by_its_maximum(model_dir):
    """Requests that keep arriving do not hold the first step past --burst-max-wait-ms."""
    server = start_server(model_dir("qwen3", seed=0), burst_wait_ms=300.0, burst_max_wait_ms=30.0)
    try:
        before = _prefill_steps(server)
        _send_spaced(server.url)
        steps = _prefill_steps(server) - before
    finally:
        server.stop()
    assert steps > 1


def test_burst_flags_reject_negative_values():
    from temper.engine.server import ServerArgs

    with pytest.raises(ValueError, match="burst_wait_ms"):
        ServerArgs(model="m", burst_wait_ms=-1.0)
