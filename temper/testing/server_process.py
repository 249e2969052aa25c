"""An engine server in a child process (``python -m temper.engine.server``), for GPU tests and benchmarks
whose engine must live in another process than the caller: CUDA IPC cannot map a buffer into the
process that allocated it, so a colocated weight sync needs two processes on one GPU.

    with engine_server_process(model_dir, "--device", "cuda:0") as url:
        httpx.post(f"{url}/generate", ...)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

import temper

LOG_TAIL = 3000  # characters of the server's output quoted when it fails to start


@contextlib.contextmanager
def engine_server_process(model: str | Path, *flags: str, timeout_s: float = 600.0) -> Iterator[str]:
    """Start ``temper serve --model MODEL FLAGS...`` on a free loopback port, yield its URL once
    ``/health`` answers, and stop it on exit. RuntimeError (with the end of the server's output) when
    it exits or is not healthy within `timeout_s` seconds."""
    port = _free_port()
    cmd = [sys.executable, "-m", "temper.engine.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), *flags]  # fmt: skip
    source = str(Path(temper.__file__).resolve().parents[1])  # the child imports this very temper
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.NamedTemporaryFile("w+", prefix="temper-server-", suffix=".log") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, Path(log.name), timeout_s)
            yield url
        finally:
            _stop(proc)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the engine server exited with code {proc.returncode} before it became healthy; "
                               f"its output ends with:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=30, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine server at {url} was not healthy within {timeout_s:.0f} s; "
                               f"its output ends with:\n{_tail(log)}")
        time.sleep(0.5)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL:]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
