"""`temper doctor`: is this machine ready for a run? One verdict per line: ok, warn or fail, and why.

Versions (Python, temper, torch, CUDA, NCCL, Ray, transformers, each against temper's requirement),
GPUs and their free memory, CPU cores and host memory, loopback ports, disk space of the working
directory and /tmp, /dev/shm (Ray's object store and the tensor weight sync), the optional packages
(SGLang, vLLM, math-verify, TensorBoard, W&B: found and their version, not imported), and environment
settings known to break or slow runs. torch is imported (CUDA and NCCL are its answers); GPU memory
comes from nvidia-smi, so no GPU gets a CUDA context. The exit status is 1 when any line fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from temper import machine
from temper.machine import GiB

VERDICTS = ("ok", "warn", "fail")
CPU_WORKERS_PER_CORE = 4  # placement.CPU_OVERSUBSCRIPTION, not imported: it would load temper.cluster
PORTS_TO_BIND = 4
DISK_WARN_BYTES = 10 * GiB
DISK_FAIL_BYTES = 1 * GiB
HOST_MEMORY_WARN_BYTES = 4 * GiB
RAY_OBJECT_STORE_SHARE = 0.3
"""Ray's default object store: 30% of the host's memory, in /dev/shm when it has room, else in /tmp."""

OPTIONAL = (
    ("sglang", "sglang", "--rollout-backend sglang"),
    ("vllm", "vllm", "a vLLM server you start yourself; temper starts its built-in engine or SGLang"),
    ("math-verify", "math_verify", "--rm-type math / dapo / deepscaler"),
    ("tensorboard", "tensorboard", "--use-tensorboard"),
    ("wandb", "wandb", "--use-wandb"),
)
"""(distribution, module, what needs it) of the packages a run may use."""

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, the verdict (one of VERDICTS), the finding and, when
    not ok, what to do."""

    name: str
    verdict: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<5} {self.name:<20} {self.detail}"


def run_checks() -> list[Check]:
    """Every check, in report order."""
    checks: list[Check] = []
    for group in (_versions, _devices, _host, _network, _storage, _optional, _environment):
        checks.extend(group())
    return checks


def main() -> int:
    """Print the report; 1 when any check fails."""
    checks = run_checks()
    for check in checks:
        print(check.line())
    counts = {v: sum(c.verdict == v for c in checks) for v in VERDICTS}
    print(", ".join(f"{n} {v}" for v, n in counts.items()))
    return 1 if counts["fail"] else 0


# ---- versions -------------------------------------------------------------------------------------


def _versions() -> Iterator[Check]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 11):
        yield Check("python", "fail", f"{version}: temper needs Python 3.11 or newer")
    else:
        yield Check("python", "ok", f"{version} ({sys.executable})")
    yield Check("temper", "ok", _installed("temper") or "not installed as a package (pip install -e .)")
    for dist in ("torch", "transformers", "ray"):
        yield _requirement(dist)


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirements() -> dict[str, str]:
    """temper's own requirement per distribution, e.g. {"torch": ">=2.11"}."""
    try:
        from packaging.requirements import Requirement

        reqs = [Requirement(r) for r in importlib.metadata.requires("temper") or []]
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return {}
    return {r.name: str(r.specifier) for r in reqs if r.marker is None}


def _requirement(dist: str) -> Check:
    version, wanted = _installed(dist), _requirements().get(dist, "")
    if version is None:
        return Check(dist, "fail", f"not installed (temper needs {dist}{wanted}; pip install -e .)")
    if wanted:
        from packaging.specifiers import SpecifierSet

        if not SpecifierSet(wanted).contains(version, prereleases=True):
            return Check(dist, "fail", f"{version}, but temper needs {dist}{wanted}")
    return Check(dist, "ok", version)


# ---- GPUs -----------------------------------------------------------------------------------------


def _devices() -> Iterator[Check]:
    import torch

    listed = machine.gpus()
    visible = machine.visible_gpus(listed)
    build = torch.version.cuda
    seen = torch.cuda.device_count() if build else 0
    if build is None:
        if listed:
            yield Check("cuda", "fail", f"torch {torch.__version__} is a CPU build, but nvidia-smi lists "
                        f"{len(listed)} GPU(s): install a CUDA build (plain pip install torch)")  # fmt: skip
        else:
            yield Check("cuda", "ok", "CPU build of torch, no GPU: runs use CPU workers (gloo)")
    elif seen == 0:
        verdict = "warn" if listed else "ok"
        yield Check("cuda", verdict, f"CUDA {build} build, but no GPU visible: runs use CPU workers (gloo)")
    else:
        yield Check("cuda", "ok", f"CUDA {build}, {seen} GPU(s) visible")
    yield _nccl(torch, seen)
    yield from _gpu_memory(torch, visible, seen)


def _nccl(torch, gpus: int) -> Check:
    if not gpus:
        return Check("nccl", "ok", "not used without GPUs (gloo)")
    if not torch.distributed.is_nccl_available():
        return Check("nccl", "fail", "this torch build has no NCCL: multi-GPU training and the broadcast sync need it")
    return Check("nccl", "ok", ".".join(map(str, torch.cuda.nccl.version())))


def _gpu_memory(torch, visible: list[machine.Gpu] | None, seen: int) -> Iterator[Check]:
    if not seen:
        return
    if visible is None:  # no nvidia-smi: ask CUDA (a short-lived context on each GPU)
        visible = [machine.Gpu(i, torch.cuda.get_device_name(i), *reversed(torch.cuda.mem_get_info(i)))
                   for i in range(seen)]  # fmt: skip
    for gpu in visible:
        used = gpu.total - gpu.free
        detail = f"GPU {gpu.index} {gpu.name}: {gpu.free / GiB:.1f} of {gpu.total / GiB:.1f} GiB free"
        if used > 0.1 * gpu.total:
            yield Check("gpu memory", "warn", f"{detail}; other processes hold {used / GiB:.1f} GiB, which the "
                        f"engine's --sglang-mem-fraction-static share of the total does not leave out")  # fmt: skip
        else:
            yield Check("gpu memory", "ok", detail)


# ---- host, network, storage -----------------------------------------------------------------------


def _host() -> Iterator[Check]:
    n = machine.cores()
    yield Check("cpu", "ok", f"{n} core(s): CPU runs take at most {CPU_WORKERS_PER_CORE * n} worker processes")
    memory = machine.host_memory()
    if memory is None:
        yield Check("host memory", "warn", "unknown (no /proc/meminfo)")
        return
    total, available = memory
    verdict = "warn" if available < HOST_MEMORY_WARN_BYTES else "ok"
    yield Check("host memory", verdict, f"{available / GiB:.1f} of {total / GiB:.1f} GiB available")


def _network() -> Iterator[Check]:
    yield _ports()
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError as e:
        yield Check("hostname", "warn", f"{host} does not resolve ({e}): one-node runs use 127.0.0.1, several nodes "
                    "need each node's name to resolve")  # fmt: skip
    else:
        yield Check("hostname", "ok", f"{host} -> {address}")
    if os.environ.get("RAY_ADDRESS"):
        yield _ray_address(os.environ["RAY_ADDRESS"])


def _ports() -> Check:
    """Engines, the router and torch.distributed each bind an ephemeral port on the loopback."""
    sockets = []
    try:
        for _ in range(PORTS_TO_BIND):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        ports = sorted(s.getsockname()[1] for s in sockets)
    except OSError as e:
        return Check("ports", "fail", f"cannot bind a port on 127.0.0.1 ({e}): engines and the router could not listen")
    finally:
        for s in sockets:
            s.close()
    span = _read("/proc/sys/net/ipv4/ip_local_port_range")
    where = f" (ephemeral range {' - '.join(span.split())})" if span else ""
    return Check("ports", "ok", f"{PORTS_TO_BIND} ephemeral ports bound on 127.0.0.1, e.g. {ports[0]}{where}")


def _ray_address(address: str) -> Check:
    """RAY_ADDRESS makes every run join that cluster instead of starting its own head."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return Check("ray cluster", "ok", f"RAY_ADDRESS={address}: runs join that cluster")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as e:
        return Check("ray cluster", "fail", f"RAY_ADDRESS={address} does not answer ({e}): start it (ray start --head) "
                     "or unset RAY_ADDRESS to let runs start their own")  # fmt: skip
    return Check("ray cluster", "ok", f"RAY_ADDRESS={address} answers: runs join that cluster")


def _storage() -> Iterator[Check]:
    for name, path in (("disk .", Path.cwd()), ("disk /tmp", Path("/tmp"))):
        yield _disk(name, path)
    yield _shm()


def _disk(name: str, path: Path) -> Check:
    usage = machine.disk(path)
    if usage is None:
        return Check(name, "warn", f"{path} not found")
    total, free = usage
    detail = f"{free / GiB:.1f} of {total / GiB:.1f} GiB free ({path})"
    if free < DISK_FAIL_BYTES:
        return Check(name, "fail", f"{detail}: checkpoints, Ray's logs and spilled objects will not fit")
    if free < DISK_WARN_BYTES:
        return Check(name, "warn", f"{detail}: checkpoints (12 bytes per parameter with optimizer state) need room")
    return Check(name, "ok", detail)


def _shm() -> Check:
    usage = machine.disk("/dev/shm")
    if usage is None:
        return Check("/dev/shm", "warn", "none: Ray keeps its object store in /tmp (slower)")
    total, free = usage
    memory = machine.host_memory()
    wanted = int(RAY_OBJECT_STORE_SHARE * memory[1]) if memory else 0
    detail = f"{free / GiB:.1f} of {total / GiB:.1f} GiB free"
    if free < wanted:
        return Check("/dev/shm", "warn", f"{detail}: Ray's object store ({RAY_OBJECT_STORE_SHARE:.0%} of memory) "
                     "falls back to /tmp and the tensor weight sync needs a bucket's room there; in Docker, "
                     "run with --shm-size=8g or more")  # fmt: skip
    return Check("/dev/shm", "ok", detail)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# ---- optional packages ----------------------------------------------------------------------------


def _optional() -> Iterator[Check]:
    """Found or not (importlib.util.find_spec), with the installed version; nothing is imported."""
    for dist, module, needed_by in OPTIONAL:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            yield Check(dist, "ok", _installed(dist) or "found")
        elif dist in _requirements():
            yield Check(dist, "fail", f"not installed, but temper requires it ({needed_by}): pip install -e .")
        else:
            yield Check(dist, "ok", f"not installed (needed only for {needed_by})")


# ---- environment ----------------------------------------------------------------------------------


def _environment() -> Iterator[Check]:
    found = [check for rule in ENV_RULES if (check := rule(os.environ)) is not None]
    yield from found or [Check("environment", "ok", "no known-bad settings")]


def _empty_visible_devices(env) -> Check | None:
    if env.get("CUDA_VISIBLE_DEVICES") == "":
        return Check("CUDA_VISIBLE_DEVICES", "fail", "set to an empty string: CUDA sees no GPU, so every run falls "
                     "back to CPU workers; unset it or list GPUs (0,1,...)")  # fmt: skip
    return None


def _nccl_p2p(env) -> Check | None:
    off = [v for v in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE") if env.get(v, "0") not in ("0", "")]
    if off:
        return Check(off[0], "warn", f"{', '.join(off)} set: NCCL moves GPU-to-GPU traffic (FSDP, the broadcast "
                     "weight sync) through slower paths; unset unless your GPUs hang without it")  # fmt: skip
    return None


def _launch_blocking(env) -> Check | None:
    if env.get("CUDA_LAUNCH_BLOCKING", "0") not in ("0", ""):
        return Check("CUDA_LAUNCH_BLOCKING", "warn", "set: every CUDA call waits for the GPU (for debugging; "
                     "training and generation run several times slower)")  # fmt: skip
    return None


def _proxy(env) -> Check | None:
    """A proxy for loopback traffic: Ray's gRPC, sglang-router and user code (custom generate functions,
    OpenAI clients) honour it, so requests to 127.0.0.1 would go to the proxy. temper's own clients
    ignore proxy variables."""
    proxies = [v for v in PROXY_VARS if env.get(v)]
    if not proxies:
        return None
    no_proxy = [e.strip() for e in (env.get("NO_PROXY", "") + "," + env.get("no_proxy", "")).split(",") if e.strip()]
    missing = [host for host in ("127.0.0.1", "localhost") if not _bypassed(host, no_proxy)]
    if not missing:
        return None
    return Check(proxies[0], "warn", f"{', '.join(proxies)} set and NO_PROXY does not cover {' or '.join(missing)}: "
                 "Ray and clients in your own plug-ins would send loopback requests to the proxy; "
                 "export NO_PROXY=127.0.0.1,localhost (no_proxy too)")  # fmt: skip


def _bypassed(host: str, no_proxy: list[str]) -> bool:
    for entry in no_proxy:
        if entry == "*" or entry.lstrip(".") == host:
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


ENV_RULES: tuple[Callable[[Mapping[str, str]], Check | None], ...] = (
    _empty_visible_devices,
    _nccl_p2p,
    _launch_blocking,
    _proxy,
)
"""Each looks at the environment and returns a Check for a known-bad setting, else None."""
