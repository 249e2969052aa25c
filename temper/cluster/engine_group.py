"""The rollout engines: Ray actors that each run one engine HTTP server, and the driver's handle on them.

`EngineWorker` (one per engine) serves generation and nothing else: the built-in engine's server
(`temper.engine.server.ServerThread`) inside the actor's process, or with `--rollout-backend sglang`
an SGLang server as a child process on the engine's GPUs. It binds a free port on loopback (one-node
runs) or on its node's address, and reports its URL. Engines on a node's address are reachable by
anyone on the network, so they require an API key (`give_engines_a_key`: --sglang-api-key, else a random
key for the run) that the router, the weight sync and the driver's calls send.

`EngineGroup` (driver side) is the run's list of engine URLs — those temper started, or
`--rollout-external-engine-addrs` — with the control calls the driver makes between phases: pause and
continue generation around a weight update, release and resume memory around training (--colocate),
and the weight version each engine serves. Each engine temper started keeps its `EngineSlot` (its bundle
and arguments), so that --use-fault-tolerance can restart it in place (`restart`), and writes its log to
``<run dir>/engines/engine-N.log``, whose last lines name a failure (`describe_failure`).

`--sglang-*` pass-through flags: the built-in engine honours the `SERVER_ARG_OF` names below and names
the ones it ignores in one warning line; with `--rollout-backend sglang` all of them go to SGLang.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from temper.cluster.placement import stop_workers
from temper.cluster.remote import enable_stack_dumps
from temper.config import ConfigError
from temper.rollout.router_flags import engine_api_key

# httpx is imported where it is used: the built-in engine's worker process (EngineWorker) never needs it, and
# its import (with its CLI's rich and click) is ~0.1 s of that process's start.
if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

SERVER_ARG_OF = {
    "mem_fraction_static": "mem_fraction_static",
    "context_length": "max_model_len",
    "log_level": "log_level",
    "max_running_requests": "max_running_requests",
    "chunked_prefill_size": "chunked_prefill_size",
    "disable_radix_cache": "disable_radix_cache",
    "random_seed": "random_seed",
    "dtype": "dtype",
    "skip_server_warmup": "skip_server_warmup",
    "disable_custom_all_reduce": "disable_custom_all_reduce",
    "api_key": "api_key",
}
"""--sglang-NAME → the built-in engine's `ServerArgs` field."""

ROLLOUT_SIDE = ("router_ip", "router_port")
"""--sglang-router-ip/--sglang-router-port name an existing router; the rollout side reads them."""

START_TIMEOUT_S = 600.0


def give_engines_a_key(cfg, single_node: bool) -> str | None:
    """The key the run's engines will require: --sglang-api-key when given; else, for engines that listen
    beyond loopback (a run over several nodes), a random key for this run, written into the config
    (``cfg.engine.sglang["api_key"]``, which the engines, the router and the weight sync read) before any
    engine or train rank starts; else None (loopback engines need none)."""
    if cfg.engine.sglang.get("api_key") is True:
        raise ConfigError("--sglang-api-key needs a value: the key clients send as 'Authorization: Bearer KEY'")
    if (key := engine_api_key(cfg)) is not None or single_node:
        return key
    if cfg.engine.sglang.get("router_ip") is not None:
        raise ConfigError(
            "the engines of a run over several nodes listen on their nodes' addresses and require an API key, which "
            "the router named by --sglang-router-ip must send them: give --sglang-api-key KEY and start that router "
            "with the same key for its workers"
        )
    cfg.engine.sglang["api_key"] = secrets.token_urlsafe(32)
    logger.info("engines listen beyond loopback: they require this run's API key (--sglang-api-key to choose it)")
    return cfg.engine.sglang["api_key"]


def builtin_server_settings(cfg) -> tuple[dict[str, Any], list[str]]:
    """(`ServerArgs` fields from the --sglang-* flags and the trainer's --moe-router-dtype, the flags the
    built-in engine ignores)."""
    settings: dict[str, Any] = {"log_level": "warning"}
    if getattr(cfg, "moe_router_dtype", None) == "fp32":  # route as the trainer does: the rollout's log-probs match
        settings["moe_router_dtype"] = "float32"
    ignored = []
    for name, value in cfg.engine.sglang.items():
        if name in SERVER_ARG_OF:
            settings[SERVER_ARG_OF[name]] = value
        elif name not in ROLLOUT_SIDE:
            ignored.append("--sglang-" + name.replace("_", "-"))
    return settings, ignored


def engine_dtype(cfg, device: str) -> str:
    """The dtype the built-in engine holds weights in ("auto": float32 on CPU, bfloat16 on CUDA)."""
    dtype = cfg.engine.sglang.get("dtype", "auto")
    if dtype != "auto":
        return str(dtype)
    return "bfloat16" if device == "cuda" else "float32"


class EngineWorker:
    """One rollout engine. `start()` launches the server and returns its URL; `stop()` ends it.

    host: the address to bind and to advertise. threads: torch threads (CPU runs; the built-in
    engine's tensor-parallel worker processes get as many). gpu_ids: the GPUs of the engine's bundles,
    as Ray numbers them. With one GPU the built-in engine uses the one Ray made visible; with N, it
    is tensor-parallel (`--rollout-num-gpus-per-engine`): this process, rank 0, sees exactly the
    engine's GPUs (set here, before CUDA starts) and rank r runs on the r-th of them. SGLang gets the
    same GPUs for its own tensor parallelism.
    """

    def __init__(self, cfg, host: str, device: str, threads: int, gpu_ids: list[int] | None = None,
                 name: str = "engine"):
        import torch

        torch.set_num_threads(threads)
        self.cfg, self.host, self.device, self.gpu_ids = cfg, host, device, gpu_ids or []
        self.id = enable_stack_dumps(cfg, f"{name} pid {os.getpid()}")
        if log_file := engine_log_file(cfg, name):
            _log_to(log_file, f"{name}: pid {os.getpid()} on {socket.gethostname()}, starting")
        self.server: Any = None
        self.process: subprocess.Popen | None = None
        if cfg.rollout_backend == "builtin" and len(self.gpu_ids) > 1:
            if torch.cuda.is_initialized():
                raise RuntimeError("EngineWorker: CUDA started before the engine's GPUs were made visible")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpu_ids))
            self.device = "cuda:0"

    def start(self) -> str:
        if self.cfg.rollout_backend == "sglang":
            return self._start_sglang()
        from temper.engine.server import ServerArgs, ServerThread

        settings, _ = builtin_server_settings(self.cfg)
        args = ServerArgs(model=self.cfg.hf_checkpoint, host=self.host, port=0, device=self.device,
                          tp_size=self.cfg.rollout_num_gpus_per_engine, **settings)
        self.server = ServerThread(args, startup_timeout=START_TIMEOUT_S).start()
        return f"http://{self.host}:{self.server.port}"

    def _start_sglang(self) -> str:
        if importlib.util.find_spec("sglang") is None:
            raise RuntimeError(
                "--rollout-backend sglang: SGLang is not installed on this node (pip install 'sglang[all]'); "
                "drop the flag to use the built-in engine"
            )
        port = free_port(self.host)
        flags = sglang_flags({k: v for k, v in self.cfg.engine.sglang.items() if k not in ROLLOUT_SIDE})
        if self.cfg.use_rollout_routing_replay:  # R3: the answers carry each token's routed experts
            flags.append("--enable-return-routed-experts")
        command = [
            sys.executable, "-m", "sglang.launch_server", "--model-path", self.cfg.hf_checkpoint,
            "--host", self.host, "--port", str(port), "--tp-size", str(max(len(self.gpu_ids), 1)), *flags,
        ]  # fmt: skip
        env = dict(os.environ)
        if self.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpu_ids))
        self.process = subprocess.Popen(command, env=env)
        url = f"http://{self.host}:{port}"
        wait_healthy(url, START_TIMEOUT_S, alive=lambda: self.process.poll() is None)
        return url

    def identity(self):
        """The process's `WorkerId` (name, host, pid, stack file)."""
        return self.id

    def device_memory(self) -> int:
        """Total bytes of the engine's (first) GPU, for the colocated memory plan."""
        import torch

        return torch.cuda.get_device_properties(0).total_memory  # its GPUs are the only visible ones

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def engine_log_file(cfg, name: str) -> str | None:
    """``<run dir>/engines/<name>.log``: the engine process's log, whose last lines name a failure."""
    run_dir = getattr(cfg, "run_dir", None)
    return os.path.join(os.path.abspath(run_dir), "engines", f"{name}.log") if run_dir else None


def _log_to(path: str, first_line: str) -> None:
    """The records this process logs (at the engine's --sglang-log-level) also go to `path`, after
    `first_line` (appended: a restarted engine continues its predecessor's file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {first_line}\n")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def last_lines(path: str | None, count: int = 8) -> list[str]:
    """The last `count` lines of the file at `path` ([] when there is none)."""
    if not path or not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        f.seek(max(os.path.getsize(path) - 16384, 0))
        return f.read().decode("utf-8", "replace").splitlines()[-count:]


def sglang_flags(values: dict[str, Any]) -> list[str]:
    """--sglang-NAME values as SGLang's own flags: True → a bare flag, False → left out, lists spread."""
    flags: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, alive=lambda: True) -> None:
    """Poll `url`/health until it answers 200; RuntimeError when the server died or `timeout_s` passed."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the engine server for {url} exited before it became healthy")
        try:
            if httpx.get(f"{url}/health", timeout=30, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the engine server {url} did not become healthy within {timeout_s:.0f}s")


class EngineCallError(RuntimeError):
    """A control call to an engine that failed or got no answer in time; names the engine and the call."""


@dataclass(eq=False)  # a slot is one engine's place: compared by identity
class EngineSlot:
    """One engine temper started, and what starts it again: `name` ("engine-0"), the Ray actor
    `options` (its bundle) and `EngineWorker` arguments `args`; `log_file` (see `engine_log_file`) and
    the process `pid` and `host` of the current incarnation; `restarts` so far."""

    name: str
    options: dict[str, Any] = field(repr=False)
    args: tuple = field(repr=False)
    log_file: str | None = None
    pid: int | None = None
    host: str | None = None
    restarts: int = 0


class EngineGroup:
    """The run's engines: URLs (and the Ray actors of those temper started), with control calls.

    `dtype` is the dtype the engines hold weights in when temper started built-in engines (None:
    unknown), for `--check-weight-update-equal`. Every control call waits at most `timeout_s` seconds
    for each engine's answer (--engine-call-timeout); past that, or when an engine cannot be reached,
    `EngineCallError` names the engine and the call. `use_api_key` sets the key the engines require.
    """

    def __init__(self, urls: list[str], workers: list[Any] = (), dtype: str | None = None, timeout_s: float = 600.0):
        self.urls = [u.rstrip("/") for u in urls]
        self.workers = list(workers)
        self.slots: list[EngineSlot] = []  # temper's engines: slots[i] is workers[i], serving urls[i]
        self.dtype = dtype
        self.timeout_s = timeout_s
        import httpx

        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), trust_env=False)

    def __len__(self) -> int:
        return len(self.urls)

    def use_api_key(self, key: str | None) -> None:
        """Send ``Authorization: Bearer KEY`` with every control call (engines started with an API key)."""
        if key is None:
            self._http.headers.pop("Authorization", None)
        else:
            self._http.headers["Authorization"] = f"Bearer {key}"

    def _call(self, method: str, url: str, path: str, **kwargs: Any) -> httpx.Response:
        """One control call to one engine; EngineCallError naming both when it fails or does not answer."""
        import httpx

        try:
            response = self._http.request(method, f"{url}{path}", **kwargs)
        except httpx.TimeoutException as e:
            raise EngineCallError(
                f"engine {url} did not answer {method} {path} within {self.timeout_s:g} s (--engine-call-timeout): "
                f"it is stuck or overloaded ({type(e).__name__})"
            ) from e
        except httpx.HTTPError as e:
            raise EngineCallError(f"engine {url}: {method} {path} failed: {type(e).__name__}: {e}") from e
        if response.status_code >= 400:
            raise EngineCallError(f"engine {url}: {method} {path} failed ({response.status_code}): {response.text[:300]}")
        return response

    def _post(self, path: str, body: dict | None = None) -> None:
        for url in self.urls:
            self._call("POST", url, path, json=body or {})

    def pause(self) -> None:
        """Stop stepping every engine; requests in flight keep their state (mode in_place)."""
        self._post("/pause_generation", {"mode": "in_place"})

    def continue_generation(self) -> None:
        self._post("/continue_generation")

    def release_memory(self, tags: list[str] | tuple[str, ...] | None = None) -> None:
        """Free engine memory (`tags`: weights, kv_cache; None = all) so that the trainer can use it."""
        self._post("/release_memory_occupation", {"tags": _tags(tags)})

    def resume_memory(self, tags: list[str] | tuple[str, ...] | None = None) -> None:
        self._post("/resume_memory_occupation", {"tags": _tags(tags)})

    def device_memory(self) -> int | None:
        """The smallest total memory (bytes) of the GPUs under the engines temper started; None if none."""
        import ray

        return min(ray.get([w.device_memory.remote() for w in self.workers], timeout=300)) if self.workers else None

    def describe(self) -> list[str]:
        """One line per engine: its kernels, decode CUDA graphs, decode tile and KV cache, as its
        `/get_server_info` reports them (an engine that does not say, e.g. SGLang, gets its URL only)."""
        import httpx

        lines = []
        for url in self.urls:
            try:
                info = self._http.get(f"{url}/get_server_info", timeout=30.0).json()
            except (httpx.HTTPError, ValueError) as e:
                lines.append(f"engine {url}: no server info ({type(e).__name__})")
                continue
            if info.get("engine") != "temper":
                lines.append(f"engine {url}: {info.get('engine', 'not temper')}, context {info.get('context_length')}")
                continue
            lines.append(
                f"engine {url}: kernels {', '.join(info.get('engine_kernels') or [])}; decode CUDA graphs "
                f"{'on' if info.get('decode_cuda_graphs') else 'off'}; decode tile {info.get('decode_tile')}; "
                f"KV cache {info.get('max_total_num_tokens')} tokens; context {info.get('context_length')}; "
                f"tensor parallel {info.get('tp_size')}"
            )
        return lines

    def weight_versions(self) -> list[str]:
        """The weight version each engine serves (`/get_weight_version`)."""
        return [str(self._call("GET", url, "/get_weight_version").json()["weight_version"]) for url in self.urls]

    def expect_version(self, version: str) -> None:
        """RuntimeError unless every engine serves `version` (checked after each weight sync)."""
        served = dict(zip(self.urls, self.weight_versions()))
        wrong = {url: v for url, v in served.items() if v != version}
        if wrong:
            raise RuntimeError(f"after the weight sync to version {version}, engines serve {wrong}")

    # ---- the engines temper started: start, identify, restart --------------------------------------

    def launch(self, slot: EngineSlot) -> Any:
        """Start the engine `slot` describes as a new Ray actor (appended, or in its slot's place when
        the slot is known); returns the ref of its URL."""
        import ray

        worker = ray.remote(EngineWorker).options(**slot.options).remote(*slot.args)
        if slot in self.slots:
            self.workers[self.slots.index(slot)] = worker
        else:
            self.slots.append(slot)
            self.workers.append(worker)
        return worker.start.remote()

    def identify(self, timeout_s: float = 300.0) -> None:
        """Learn the process of every engine temper started (its pid, for restarts and tests)."""
        import ray

        for slot, worker_id in zip(self.slots, ray.get([w.identity.remote() for w in self.workers], timeout=timeout_s)):
            slot.pid, slot.host = worker_id.pid, worker_id.host

    def slot_of(self, url: str) -> int | None:
        """The index of the engine temper started that serves `url` now (None: external or replaced)."""
        url = url.rstrip("/")
        return self.urls.index(url) if url in self.urls[: len(self.slots)] else None

    def restart(self, index: int, timeout_s: float = START_TIMEOUT_S) -> str:
        """Kill engine `index`'s process (a stuck one too) and start a new one on the same bundle with the
        same arguments; returns its URL, which replaces the old one in `urls`."""
        import ray

        slot = self.slots[index]
        if slot.pid is not None and slot.host == socket.gethostname():
            try:
                os.kill(slot.pid, signal.SIGKILL)
            except OSError:
                pass  # already gone
        ray.kill(self.workers[index], no_restart=True)
        slot.restarts += 1
        url = ray.get(self.launch(slot), timeout=timeout_s)
        self.urls[index] = url.rstrip("/")
        worker_id = ray.get(self.workers[index].identity.remote(), timeout=60)
        slot.pid, slot.host = worker_id.pid, worker_id.host
        logger.warning("%s restarted (restart %d): now %s, pid %s", slot.name, slot.restarts, url, slot.pid)
        return self.urls[index]

    def unresponsive(self, timeout_s: float) -> list[str]:
        """The engines whose ``/health`` gets no 2xx answer within `timeout_s` seconds (dead or stuck)."""
        import httpx

        bad = []
        for url in self.urls:
            try:
                if httpx.get(f"{url}/health", timeout=timeout_s, trust_env=False).is_success:
                    continue
            except httpx.HTTPError:
                pass
            bad.append(url)
        return bad

    def describe_failure(self, url: str) -> str:
        """Words on engine `url` for an error naming it: which engine, its pid, and its log's last lines."""
        index = self.slot_of(url)
        if index is None:
            return ""
        slot = self.slots[index]
        lines = last_lines(slot.log_file)
        where = f" ({slot.name}, pid {slot.pid})"
        if not lines:
            return where + "; it wrote no log"
        return where + f"; the last lines of its log {slot.log_file}:\n    " + "\n    ".join(lines)

    def stop(self) -> None:
        self._http.close()
        stop_workers(self.workers, "stop")
        self.workers = []


def _tags(tags: list[str] | tuple[str, ...] | None) -> list[str] | None:
    if tags is not None and not tags:
        raise ValueError("memory tags: an empty list would mean all tags on the server; pass None for all")
    return None if tags is None else list(tags)


def external_engine_urls(addrs: list[str]) -> list[str]:
    """`--rollout-external-engine-addrs host:port ...` as URLs."""
    return [a if a.startswith(("http://", "https://")) else f"http://{a}" for a in addrs]
