"""The live line of long phases (temper/observe/live.py): plain lines off a terminal, a rich line on one,
and the rollout's watcher reading a real engine server's counters."""

from __future__ import annotations

import io
import time

import httpx
import pytest

from temper.observe.live import EngineWatcher, LiveProgress, Progress


def _watcher():
    return lambda: Progress(done=3, total=8, unit="samples", rate=1500.0, eta_s=12.0)


def test_off_a_terminal_a_long_phase_gets_a_plain_line_every_quiet_period():
    stream = io.StringIO()
    live = LiveProgress(stream, quiet_s=0.1, terminal=False)
    live.watch("rollout", _watcher)
    with live.phase("rollout"):
        time.sleep(0.35)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert all(line.startswith("  rollout ") and line.endswith(": 3/8 samples, 1.5k tok/s, at most 12 s left")
               for line in lines)  # fmt: skip


def test_a_short_phase_prints_nothing_and_a_failing_watcher_stops_nothing():
    stream = io.StringIO()
    live = LiveProgress(stream, quiet_s=5.0, terminal=False)
    with live.phase("sync"):
        time.sleep(0.05)
    assert stream.getvalue() == ""

    def broken():
        raise RuntimeError("no engines")

    live = LiveProgress(stream, quiet_s=0.05, terminal=False)
    live.watch("train", lambda: broken)
    with live.phase("train"):
        time.sleep(0.2)
    assert "train " in stream.getvalue() and "no engines" not in stream.getvalue()


def test_on_a_terminal_the_phase_is_a_redrawn_line():
    stream = io.StringIO()
    live = LiveProgress(stream, refresh_s=0.05, terminal=True)
    live.watch("rollout", _watcher)
    with live.phase("rollout"):
        time.sleep(0.3)
    out = stream.getvalue()
    assert "rollout 0 s: 3/8 samples, 1.5k tok/s" in out
    assert "\x1b[" in out  # cursor control: the line is redrawn in place, then removed


@pytest.fixture(scope="module")
def server():
    from temper.engine.server import ServerArgs, ServerThread
    from temper.testing import tiny_model_dir

    thread = ServerThread(ServerArgs(model=str(tiny_model_dir("qwen3")), port=0, log_level="warning")).start()
    yield thread
    thread.stop()


def test_engine_watcher_counts_the_phase_s_finished_requests_and_tokens(server):
    body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}}
    assert httpx.post(f"{server.url}/generate", json=body, timeout=60).status_code == 200  # before: not counted
    watcher = EngineWatcher([server.url], total=4, max_tokens=4)
    try:
        for i in range(3):
            r = httpx.post(f"{server.url}/generate", json={**body, "input_ids": [5 + i, 6, 7]}, timeout=60)
            assert r.status_code == 200
        progress = watcher()
    finally:
        watcher.close()
    assert progress.done == 3 and progress.total == 4 and progress.unit == "samples"
    assert progress.rate > 0 and progress.eta_s == pytest.approx(4 / progress.rate, rel=0.5)


def test_engine_watcher_without_an_answer_reports_nothing():
    watcher = EngineWatcher(["http://127.0.0.1:9"], total=4, timeout_s=0.5)
    try:
        assert watcher() is None
    finally:
        watcher.close()
