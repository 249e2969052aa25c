"""Fixtures for the server tests: real engine servers on 127.0.0.1 (ephemeral ports).

`served` is one server shared by the read-mostly tests (model: the parent conftest's spread tiny
Qwen3, seed 0, so greedy outputs depend on the whole prompt). Tests that change weights start their
own server with `server_helpers.start_server`. Every request carries a timeout; no traffic leaves the loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from server_helpers import TIMEOUT, start_server

from temper.engine.server import ServerThread


@pytest.fixture(scope="session")
def served(model_dir) -> Iterator[ServerThread]:
    server = start_server(model_dir("qwen3", seed=0), served_model_name="tiny-qwen3")
    yield server
    server.stop()


@pytest.fixture()
def client(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as c:
        yield c


