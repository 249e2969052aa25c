"""The driver's control calls to engines are bounded: an engine that stops answering (its port open, no
reply) is named with the call within 2x --engine-call-timeout; an error status names both too."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from temper.cluster.engine_group import EngineCallError, EngineGroup


@pytest.fixture()
def silent_engine():
    """A port that accepts connections and reads requests but never answers (a hung engine)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_engine_is_named_within_twice_the_timeout(silent_engine):
    engines = EngineGroup([silent_engine], timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(EngineCallError) as err:
        engines.pause()
    assert time.monotonic() - started < 2.0
    message = str(err.value)
    assert message.startswith(f"engine {silent_engine} did not answer POST /pause_generation within 1 s")
    assert "--engine-call-timeout" in message
    with pytest.raises(EngineCallError, match="GET /get_weight_version within 1 s"):
        engines.expect_version("3")
    engines.stop()


def test_an_unreachable_engine_and_an_error_status_are_named(served_url):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there now
    with pytest.raises(EngineCallError, match=f"engine {url}: POST /continue_generation failed: ConnectError"):
        EngineGroup([url], timeout_s=5.0).continue_generation()
    with pytest.raises(EngineCallError, match=r"POST /release_memory_occupation failed \(400\)"):
        EngineGroup([served_url], timeout_s=30.0).release_memory(["bogus"])


@pytest.fixture(scope="module")
def served_url():
    from temper.engine.server import ServerArgs, ServerThread
    from temper.testing.tiny_models import tiny_model_dir

    server = ServerThread(ServerArgs(model=str(tiny_model_dir("qwen3")), port=0, log_level="warning",
                                     skip_server_warmup=True)).start()
    yield server.url
    server.stop()
