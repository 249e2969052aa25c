"""``temper serve``: flags, and a real server process on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from temper.cli import build_parser
from temper.engine.server.server_args import ServerArgs, server_args_from

REPO = Path(__file__).resolve().parents[3]


def test_serve_flags_map_to_engine_args(tmp_path):
    args = build_parser().parse_args([
        "serve", "--model", str(tmp_path), "--port", "1234", "--max-running-requests", "8", "--chunked-prefill-size", "512",
        "--disable-radix-cache", "--random-seed", "3", "--max-model-len", "256", "--num-kv-blocks", "64",
        "--mem-fraction-static", "0.5", "--served-model-name", "m", "--dtype", "float32", "--device", "cpu",
        "--tp-size", "2", "--disable-custom-all-reduce", "--load-format", "dummy", "--moe-router-dtype", "float32",
        "--moe-kernel", "grouped_mm",
    ])
    server_args = server_args_from(args)
    assert server_args.host == "127.0.0.1" and server_args.port == 1234 and server_args.model_name == "m"
    engine = server_args.engine_args()
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.seed) == (8, 512, 3)
    assert (engine.max_model_len, engine.num_kv_blocks, engine.mem_fraction_static) == (256, 64, 0.5)
    assert engine.enable_prefix_caching is False and engine.device == "cpu" and engine.tensor_parallel_size == 2
    assert engine.symmetric_memory is False and engine.load_format == "dummy" and engine.moe_router_dtype == "float32"
    assert engine.moe_kernel == "grouped_mm"
    default = server_args_from(build_parser().parse_args(["serve", "--model", "m"])).engine_args()
    assert default.moe_router_dtype is None and default.moe_kernel == "auto"
    with pytest.raises(ValueError, match=r"moe_kernel must be one of \('auto', 'grouped_mm'\)"):
        ServerArgs(model="x", moe_kernel="triton").engine_args()
    with pytest.raises(ValueError, match="moe_router_dtype must be None or 'float32', got 'fp32'"):
        ServerArgs(model="x", moe_router_dtype="fp32").engine_args()
    alias = server_args_from(build_parser().parse_args(["serve", "--model", "m", "--tensor-parallel-size", "4"]))
    assert alias.tp_size == 4 and alias.engine_args().symmetric_memory is None  # on where usable
    with pytest.raises(ValueError, match="log_level"):
        ServerArgs(model="x", log_level="loud")
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match=rf"tp_size must be a positive integer, got {bad!r}"):
            ServerArgs(model="x", tp_size=bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])  # --model is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", "m", "--load-format", "pt"])  # auto or dummy


def test_log_level_in_any_case():
    """slime's scripts pass --sglang-log-level INFO; SGLang's router writes warn."""
    assert ServerArgs(model="x", log_level="INFO").log_level == "info"
    assert ServerArgs(model="x", log_level="WARN").log_level == "warning"
    parsed = build_parser().parse_args(["serve", "--model", "m", "--log-level", "DEBUG"])
    assert server_args_from(parsed).log_level == "debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_temper_serve_process(model_dir):
    port = _free_port()
    cmd = [sys.executable, "-m", "temper.cli", "serve", "--model", str(model_dir("qwen3", seed=0)), "--port", str(port),
           "--log-level", "warning", "--max-model-len", "512", "--num-kv-blocks", "64"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.3)
        info = httpx.get(f"{url}/server_info", timeout=10).json()
        assert info["context_length"] == 512 and info["host"] == "127.0.0.1"
        out = httpx.post(f"{url}/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}}, timeout=30)
        assert out.json()["meta_info"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown


def test_api_key(model_dir):
    from server_helpers import start_server

    server = start_server(model_dir("qwen3", seed=0), api_key="sekret", skip_server_warmup=True)
    try:
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # liveness stays open
        assert httpx.get(f"{server.url}/ping", timeout=30).status_code == 200
        for path in ("/metrics", "/ready", "/get_model_info", "/health_generate"):
            assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 401, path
        assert httpx.post(f"{server.url}/release_memory_occupation", json={}, timeout=30).status_code == 401
        auth = {"Authorization": "Bearer sekret"}
        assert httpx.get(f"{server.url}/metrics", headers=auth, timeout=30).status_code == 200
        body = {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}}
        r = httpx.post(f"{server.url}/generate", json=body, timeout=30)
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        r = httpx.post(f"{server.url}/generate", json=body, headers={"Authorization": "Bearer sekret"}, timeout=30)
        assert r.status_code == 200
    finally:
        server.stop()
