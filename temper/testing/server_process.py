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
from collections.abc import Iterator
from pathlib import Path


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
    """`engine_group.wait_healthy` on the process, its output's tail in the error."""
    from temper.cluster.engine_group import wait_healthy

    try:
        wait_healthy(url, timeout_s, alive=lambda: proc.poll() is None)
    except RuntimeError as e:
        exited = proc.poll() is not None
        why = f"the engine server exited with code {proc.returncode} before it became healthy" if exited else str(e)
        raise RuntimeError(f"{why}; its output ends with:\n{_tail(log)}") from None


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
