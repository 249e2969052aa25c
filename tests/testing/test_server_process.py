"""`engine_server_process`: a real server in a child process on a loopback port, and a start that fails
reported with the server's own output."""

from __future__ import annotations

import httpx
import pytest

from temper.testing import tiny_model_dir
from temper.testing.server_process import engine_server_process

pytestmark = pytest.mark.slow


def test_a_server_process_serves_and_stops():
    flags = ("--device", "cpu", "--num-kv-blocks", "16", "--max-model-len", "128", "--log-level", "warning")
    with engine_server_process(tiny_model_dir("qwen3"), *flags, timeout_s=120) as url:
        body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
        out = httpx.post(f"{url}/generate", json=body, timeout=60, trust_env=False).json()
        assert out["meta_info"]["completion_tokens"] == 2
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5, trust_env=False)


def test_a_server_that_cannot_start_is_reported_with_its_output(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)exited with code \d+ before it became healthy.*"):
        with engine_server_process(tmp_path / "no-model", "--device", "cpu", timeout_s=120):
            pass
