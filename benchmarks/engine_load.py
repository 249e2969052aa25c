"""Load test of engine servers (CPU): far more concurrent requests than an engine has slots, and an engine
killed in the middle of the load.

    python benchmarks/engine_load.py                       # both parts: 2,000 requests, a 1,024-token KV pool
    python benchmarks/engine_load.py --part kill --requests 500 --out load.json

The tiny Qwen3 of the project's factory is served by ``python -m temper.engine.server`` in a process of
its own, with a small KV pool (``--num-kv-blocks``) and at most ``--max-running-requests`` decoded together;
all requests are sent at once from several HTTP clients. Every request must come back complete (its
``max_new_tokens`` tokens, ``ignore_eos``, the ``rid`` it was sent with). Parts (``--part``, default both):

  single  one engine takes every request. Prints the latency p50/p90/p99, the request and token throughput,
          how many requests the server held at once, and the server's resident memory (sampled from /proc)
          at start, at its peak, and after the load: bounded when the peak stays within a few hundred MiB of
          the start however many requests wait.
  kill    two engines behind temper's router, a process of its own (``python -m temper.rollout.router
          --use-fault-tolerance``: the router ``train.py --use-fault-tolerance`` runs, with its health checks,
          removal and resend). Once engine 0 finished ``--kill-after`` of its half of the requests (its own
          count), it gets SIGKILL with hundreds of requests in flight; the router takes it out and sends those
          requests again, whole, to engine 1, through which every request must then complete. Prints which
          engine served how many, how many the killed one held and how many the router sent again (its log),
          the latency quantiles, and the resident memory of the surviving engine and of the router.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from temper.rollout.engine_client import EngineClient, EngineError

ROOT = Path(__file__).resolve().parents[1]
WORKER_HEADER = "X-Temper-Worker"  # temper's router names the engine that served each response
RESENT = ("sending it again", "; marked unhealthy")  # the router's log lines for a request it sends elsewhere


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["single", "kill", "both"], default="both")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=50, help="HTTP clients the requests are spread over")
    p.add_argument("--num-kv-blocks", type=int, default=64, help="each engine's KV pool (16 tokens a block)")
    p.add_argument("--max-running-requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, nargs=2, default=[8, 48], metavar=("MIN", "MAX"))
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=128, help="the engine's context (the KV pool must hold one)")
    p.add_argument("--kill-after", type=float, default=0.25,
                   help="kill: SIGKILL engine 0 once it finished this share of its half of the requests")
    p.add_argument("--health-check-interval", type=float, default=2.0, help="kill: the router's seconds between checks")
    p.add_argument("--health-check-timeout", type=float, default=30.0, help="kill: seconds a health check may take")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the whole load of a part may take")
    p.add_argument("--out", help="write the results here as JSON")
    args = p.parse_args(argv)
    if not 0 < args.kill_after < 1:
        p.error(f"--kill-after must be a share in (0, 1), got {args.kill_after}")
    return args


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Processes:
    """The servers of one part: each a child process logging to a file in `folder`, stopped on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def start(self, name: str, *module_and_flags: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        self.logs.append(log)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        command = [sys.executable, "-m", *module_and_flags]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = proc
        return proc

    def log_text(self, name: str) -> str:
        for log in self.logs:
            log.flush()
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, name: str, url: str, timeout: float = 180.0) -> None:
        """Until `url`/health answers 200; RuntimeError with the end of the log if the process exits or is late."""
        from temper.cluster.engine_group import wait_healthy

        try:
            wait_healthy(url, timeout, alive=lambda: self.procs[name].poll() is None)
        except RuntimeError as error:
            raise RuntimeError(f"{name}: {error}:\n{self.log_text(name)[-3000:]}") from None

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in self.logs:
            log.close()


def engine_flags(model: Path, args: argparse.Namespace, port: int) -> list[str]:
    return ["temper.engine.server", "--model", str(model), "--port", str(port), "--device", "cpu",
            "--num-kv-blocks", str(args.num_kv_blocks), "--max-running-requests", str(args.max_running_requests),
            "--max-client-requests", str(args.requests + 16), "--max-model-len", str(args.max_model_len),
            "--log-level", "warning"]  # fmt: skip


def router_flags(workers: list[str], args: argparse.Namespace, port: int) -> list[str]:
    return ["temper.rollout.router", "--workers", *workers, "--port", str(port), "--use-fault-tolerance",
            "--health-check-interval", str(args.health_check_interval),
            "--health-check-timeout", str(args.health_check_timeout), "--log-level", "warning"]  # fmt: skip


class Load:
    """What one load saw: per request, the latency and the engine that served it; failures; memory samples."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.completed: list[int] = []  # request indices, in completion order
        self.tokens: list[int] = []  # the output tokens of each completed request (same order)
        self.served_by: Counter[str] = Counter()
        self.failures: list[str] = []
        self.memory: dict[str, list[float]] = {}
        self.held: list[int] = []
        self.seconds = 0.0


async def fire(url: str, args: argparse.Namespace, watched: dict[str, int], held_url: str, beside=None) -> Load:
    """Send `args.requests` requests at once to `url`; sample the memory of the `watched` processes (a name
    popped from it is no longer sampled) and how many requests `held_url` holds. `beside(load)`, a coroutine
    function, runs while the requests do."""
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(rng.randint(*args.prompt_len))] for _ in range(args.requests)]
    per_client = -(-args.requests // args.clients)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(args.timeout, connect=60.0),
                                 trust_env=False) for _ in range(args.clients)]  # fmt: skip
    load = Load()

    async def one(i: int) -> None:
        body = {"input_ids": prompts[i], "rid": f"load-{i}",
                "sampling_params": {"max_new_tokens": args.max_new_tokens, "ignore_eos": True, "temperature": 1.0}}
        started = time.monotonic()
        try:
            r = await clients[i % args.clients].post("/generate", json=body)
        except httpx.HTTPError as e:
            load.failures.append(f"request {i}: {type(e).__name__}: {e}")
            return
        if r.status_code != 200:
            load.failures.append(f"request {i}: HTTP {r.status_code}: {r.text[:300]}")
            return
        out = r.json()
        if len(out["output_ids"]) != args.max_new_tokens:
            load.failures.append(f"request {i}: {len(out['output_ids'])} tokens, expected {args.max_new_tokens}")
        elif out["meta_info"]["id"] != f"load-{i}":
            load.failures.append(f"request {i}: the answer of {out['meta_info']['id']}")
        else:
            load.latencies.append(time.monotonic() - started)
            load.completed.append(i)
            load.tokens.append(len(out["output_ids"]))
            load.served_by[r.headers.get(WORKER_HEADER, url)] += 1

    async def watch() -> None:
        async with EngineClient(held_url, retries=0, timeout=10.0) as engine:
            while True:
                for name, pid in list(watched.items()):
                    load.memory.setdefault(name, []).append(rss_mib(pid))
                try:
                    load.held.append(await engine.num_requests())
                except (EngineError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(watch())] + ([asyncio.create_task(beside(load))] if beside is not None else [])
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.requests))), timeout=args.timeout)
    finally:
        for task in tasks:
            task.cancel()
        for client in clients:
            await client.aclose()
    load.seconds = time.monotonic() - started
    return load


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(load: Load, args: argparse.Namespace) -> dict:
    lat = load.latencies
    repeated = [i for i, n in Counter(load.completed).items() if n > 1]
    return {
        "requests": args.requests, "completed": len(lat), "failed": len(load.failures),
        "completed_twice": len(repeated), "missing": sorted(set(range(args.requests)) - set(load.completed))[:20],
        "tokens_each": args.max_new_tokens, "tokens_per_request": dict(Counter(load.tokens)),
        "kv_tokens": args.num_kv_blocks * 16, "max_running_requests": args.max_running_requests,
        "seconds": load.seconds, "requests_per_s": len(lat) / load.seconds,
        "tokens_per_s": len(lat) * args.max_new_tokens / load.seconds,
        "latency_p50_s": quantile(lat, 0.5), "latency_p90_s": quantile(lat, 0.9), "latency_p99_s": quantile(lat, 0.99),
        "latency_mean_s": statistics.fmean(lat) if lat else float("nan"),
        "held_peak": max(load.held, default=0), "failures": load.failures[:20],
    }  # fmt: skip


async def finished_and_held(engine: EngineClient) -> tuple[int, int]:
    """(requests the engine finished, requests it holds: running or waiting), from its /v1/loads."""
    entries = await engine.loads()
    finished = sum(int(e.get("num_finished_reqs", 0)) for e in entries)
    return finished, sum(int(e.get("num_running_reqs", 0)) + int(e.get("num_waiting_reqs", 0)) for e in entries)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (released for a server to bind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_single(model: Path, args: argparse.Namespace, folder: Path) -> dict:
    """One engine, every request."""
    with Processes(folder) as procs:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = procs.start("engine", *engine_flags(model, args, port))
        procs.wait_ready("engine", url)
        idle = rss_mib(proc.pid)
        load = asyncio.run(fire(url, args, {"engine": proc.pid}, url))
        after = rss_mib(proc.pid)
    result = summary(load, args)
    result |= {"rss_idle_mib": idle, "rss_peak_mib": max(load.memory.get("engine", [idle])), "rss_after_mib": after}
    return result


def run_kill(model: Path, args: argparse.Namespace, folder: Path) -> dict:
    """Two engines behind the fault-tolerant router; engine 0 killed once it finished `--kill-after` of its half."""
    with Processes(folder) as procs:
        ports = [free_port() for _ in range(3)]
        urls = [f"http://127.0.0.1:{p}" for p in ports[:2]]
        engines = [procs.start(f"engine-{i}", *engine_flags(model, args, ports[i])) for i in range(2)]
        for i in range(2):
            procs.wait_ready(f"engine-{i}", urls[i])
        router_url = f"http://127.0.0.1:{ports[2]}"
        router = procs.start("router", *router_flags(urls, args, ports[2]))
        procs.wait_ready("router", router_url)
        watched = {"engine-0": engines[0].pid, "engine-1": engines[1].pid, "router": router.pid}
        idle = {name: rss_mib(pid) for name, pid in watched.items()}
        kill: dict = {}
        threshold = max(1, int(args.kill_after * args.requests / 2))  # of engine 0's half of the requests

        async def kill_engine_0(load: Load) -> None:
            """SIGKILL engine 0 once it finished `threshold` requests (its own count: the client's lags when the
            CPU is short), noting how many it held just before."""
            try:
                async with EngineClient(urls[0], retries=0, timeout=5.0) as engine:
                    while (counts := await finished_and_held(engine))[0] < threshold:
                        await asyncio.sleep(0.05)
            except (EngineError, ValueError, KeyError) as e:
                kill["error"] = f"{type(e).__name__}: {e}"
                return
            kill["in_flight"] = counts[1]
            async with httpx.AsyncClient(trust_env=False) as client:  # the router's view: requests it has out
                workers = (await client.get(f"{router_url}/workers", timeout=10.0)).json()["workers"]
            kill["outstanding"] = {w["url"]: w["outstanding"] for w in workers}
            watched.pop("engine-0")
            os.kill(engines[0].pid, signal.SIGKILL)
            kill["at_s"], kill["completed_before"] = time.monotonic(), len(load.completed)

        started = time.monotonic()
        load = asyncio.run(fire(router_url, args, watched, urls[1], kill_engine_0))
        if "at_s" not in kill:
            raise RuntimeError(f"engine 0 was not killed during the load ({kill.get('error', 'it finished first')})")
        after = {name: rss_mib(pid) for name, pid in watched.items()}
        router_log = procs.log_text("router")
        workers = httpx.get(f"{router_url}/list_workers", timeout=10.0, trust_env=False).json()["urls"]
    result = summary(load, args)
    result |= {
        "killed": urls[0], "survivor": urls[1], "kill_at_s": kill["at_s"] - started,
        "completed_before_kill": kill["completed_before"], "in_flight_on_killed": kill["in_flight"],
        "router_outstanding_at_kill": kill["outstanding"],
        "served_by_killed": load.served_by[urls[0]], "served_by_survivor": load.served_by[urls[1]],
        "resent_by_router": sum(router_log.count(line) for line in RESENT), "router_workers_after": workers,
        "survivor_rss_idle_mib": idle["engine-1"], "survivor_rss_peak_mib": max(load.memory["engine-1"]),
        "survivor_rss_after_mib": after["engine-1"], "router_rss_idle_mib": idle["router"],
        "router_rss_peak_mib": max(load.memory["router"]), "router_rss_after_mib": after["router"],
    }  # fmt: skip
    return result


def report(part: str, r: dict) -> None:
    print(f"[{part}] {r['completed']}/{r['requests']} requests complete, each with its {r['tokens_each']} tokens "
          f"({r['failed']} failed, {r['completed_twice']} twice) in {r['seconds']:.1f} s: "
          f"{r['requests_per_s']:.1f} req/s, {r['tokens_per_s']:.0f} tok/s")
    print(f"[{part}] latency p50 {r['latency_p50_s']:.2f} s, p90 {r['latency_p90_s']:.2f} s, "
          f"p99 {r['latency_p99_s']:.2f} s; {'the survivor ' if part == 'kill' else ''}held at once: up to "
          f"{r['held_peak']} requests "
          f"(KV pool {r['kv_tokens']} tokens, {r['max_running_requests']} running at most)")  # fmt: skip
    if part == "single":
        print(f"[single] server memory: {r['rss_idle_mib']:.0f} MiB idle, {r['rss_peak_mib']:.0f} MiB at the peak, "
              f"{r['rss_after_mib']:.0f} MiB after the load")
    else:
        print(f"[kill] engine 0 killed at {r['kill_at_s']:.1f} s after {r['completed_before_kill']} completed, holding "
              f"{r['in_flight_on_killed']} requests just before (the router had {r['router_outstanding_at_kill']} "
              f"out); the router sent {r['resent_by_router']} again; "
              f"served by the killed engine {r['served_by_killed']}, by the survivor {r['served_by_survivor']}; "
              f"the router's workers after: {r['router_workers_after']}")
        print(f"[kill] surviving engine memory: {r['survivor_rss_idle_mib']:.0f} MiB idle, "
              f"{r['survivor_rss_peak_mib']:.0f} MiB at the peak, {r['survivor_rss_after_mib']:.0f} MiB after; router: "
              f"{r['router_rss_idle_mib']:.0f} / {r['router_rss_peak_mib']:.0f} / {r['router_rss_after_mib']:.0f} MiB")
    for failure in r["failures"][:5]:
        print("  " + failure)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from temper.testing import tiny_model_dir

    model = tiny_model_dir("qwen3")
    parts = ["single", "kill"] if args.part == "both" else [args.part]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            folder = Path(tmp) / part
            folder.mkdir()
            results[part] = (run_single if part == "single" else run_kill)(model, args, folder)
            report(part, results[part])
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if any(r["failed"] or r["completed"] != r["requests"] for r in results.values()):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
