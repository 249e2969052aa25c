"""Load test of one engine server (CPU): far more concurrent requests than the engine has slots.

    python benchmarks/engine_load.py                       # 2,000 requests, a 1,024-token KV pool
    python benchmarks/engine_load.py --requests 500 --out load.json

The tiny Qwen3 of the project's factory is served by ``python -m temper.engine.server`` in a process of
its own, with a small KV pool (``--num-kv-blocks``) and at most ``--max-running-requests`` decoded together;
all requests are sent at once from several HTTP clients. Every request must come back complete (its
``max_new_tokens`` tokens, ``ignore_eos``); the server's resident memory is sampled from /proc (Linux) while
the load runs. Prints the latency p50/p90/p99, the request and token throughput, how many requests the
server held at once, and the server's resident memory at start, at its peak, and after the load; the memory
is bounded when the peak stays within a few hundred MiB of the start however many requests wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from temper.rollout.engine_client import EngineClient, EngineError

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=50, help="HTTP clients the requests are spread over")
    p.add_argument("--num-kv-blocks", type=int, default=64, help="the engine's KV pool (16 tokens a block)")
    p.add_argument("--max-running-requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, nargs=2, default=[8, 48], metavar=("MIN", "MAX"))
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=128, help="the engine's context (the KV pool must hold one)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the whole load may take")
    p.add_argument("--out", help="write the results here as JSON")
    return p.parse_args(argv)


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(model: Path, args: argparse.Namespace, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "temper.engine.server", "--model", str(model), "--port", str(port), "--device", "cpu",
           "--num-kv-blocks", str(args.num_kv_blocks), "--max-running-requests", str(args.max_running_requests),
           "--max-client-requests", str(args.requests), "--max-model-len", str(args.max_model_len),
           "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the engine server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the engine server at {url} was not ready in {timeout:.0f} s")


async def fire(url: str, args: argparse.Namespace, pid: int) -> dict:
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(rng.randint(*args.prompt_len))] for _ in range(args.requests)]
    per_client = -(-args.requests // args.clients)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(args.timeout, connect=60.0))
               for _ in range(args.clients)]  # fmt: skip
    latencies: list[float] = []
    failures: list[str] = []
    memory: list[float] = []
    held: list[int] = []

    async def one(i: int) -> None:
        body = {"input_ids": prompts[i], "rid": f"load-{i}",
                "sampling_params": {"max_new_tokens": args.max_new_tokens, "ignore_eos": True, "temperature": 1.0}}
        started = time.monotonic()
        try:
            r = await clients[i % args.clients].post("/generate", json=body)
        except httpx.HTTPError as e:
            failures.append(f"request {i}: {type(e).__name__}: {e}")
            return
        if r.status_code != 200:
            failures.append(f"request {i}: HTTP {r.status_code}: {r.text[:200]}")
        elif len(r.json()["output_ids"]) != args.max_new_tokens:
            failures.append(f"request {i}: {len(r.json()['output_ids'])} tokens, expected {args.max_new_tokens}")
        else:
            latencies.append(time.monotonic() - started)

    async def watch() -> None:
        async with EngineClient(url, retries=0, timeout=10.0) as engine:
            while True:
                memory.append(rss_mib(pid))
                try:
                    held.append(await engine.num_requests())
                except (EngineError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.requests))), timeout=args.timeout)
    finally:
        watcher.cancel()
        for client in clients:
            await client.aclose()
    return {"seconds": time.monotonic() - started, "latencies": latencies, "failures": failures,
            "memory_mib": memory, "held": held}  # fmt: skip


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from temper.testing import tiny_model_dir

    model = tiny_model_dir("qwen3")
    with tempfile.TemporaryDirectory() as tmp, socket_port() as port:
        log = open(Path(tmp) / "server.log", "w")
        proc = start_server(model, args, port, log)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_ready(url, proc)
            except (RuntimeError, TimeoutError):
                log.flush()
                print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
                raise
            idle_mib = rss_mib(proc.pid)
            run = asyncio.run(fire(url, args, proc.pid))
            after_mib = rss_mib(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    lat = run["latencies"]
    result = {
        "requests": args.requests, "completed": len(lat), "failed": len(run["failures"]),
        "kv_tokens": args.num_kv_blocks * 16, "max_running_requests": args.max_running_requests,
        "seconds": run["seconds"], "requests_per_s": len(lat) / run["seconds"],
        "tokens_per_s": len(lat) * args.max_new_tokens / run["seconds"],
        "latency_p50_s": quantile(lat, 0.5), "latency_p90_s": quantile(lat, 0.9), "latency_p99_s": quantile(lat, 0.99),
        "latency_mean_s": statistics.fmean(lat) if lat else float("nan"),
        "held_peak": max(run["held"], default=0), "rss_idle_mib": idle_mib,
        "rss_peak_mib": max(run["memory_mib"], default=idle_mib), "rss_after_mib": after_mib,
    }  # fmt: skip
    print(f"{result['completed']}/{args.requests} requests complete ({result['failed']} failed) in "
          f"{result['seconds']:.1f} s: {result['requests_per_s']:.1f} req/s, {result['tokens_per_s']:.0f} tok/s")
    print(f"latency p50 {result['latency_p50_s']:.2f} s, p90 {result['latency_p90_s']:.2f} s, "
          f"p99 {result['latency_p99_s']:.2f} s; held at once: up to {result['held_peak']} requests "
          f"(KV pool {result['kv_tokens']} tokens, {args.max_running_requests} running at most)")
    print(f"server memory: {idle_mib:.0f} MiB idle, {result['rss_peak_mib']:.0f} MiB at the peak, "
          f"{after_mib:.0f} MiB after the load")  # fmt: skip
    for failure in run["failures"][:5]:
        print("  " + failure)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if run["failures"]:
        raise SystemExit(1)
    return result


class socket_port:
    """A free TCP port on 127.0.0.1 (released for the server to bind)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
