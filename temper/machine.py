"""What this machine has: GPUs with their memory, CPU cores, host memory, free disk.

Read without importing torch and without creating a CUDA context: GPUs come from `nvidia-smi`
(the numbers a CUDA process sees: memory.total in MiB is what `torch.cuda.mem_get_info` reports
as total), the rest from the OS. `temper doctor` and `temper plan` use it, and so does the driver
when it describes a run, which must not touch a GPU that its workers will use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi numbers it. total, free: bytes."""

    index: int
    name: str
    total: int
    free: int


def gpus(timeout_s: float = 10.0) -> list[Gpu] | None:
    """The GPUs nvidia-smi lists (all of them, whatever CUDA_VISIBLE_DEVICES says); None when there
    is no nvidia-smi or it fails (no driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=timeout_s, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = []
    for line in out.strip().splitlines():
        index, name, total, free = (part.strip() for part in line.split(","))
        found.append(Gpu(int(index), name, int(float(total)) * MiB, int(float(free)) * MiB))
    return found


def visible_gpus(all_gpus: list[Gpu] | None) -> list[Gpu] | None:
    """The GPUs a CUDA process here would use: `all_gpus` narrowed by CUDA_VISIBLE_DEVICES when it
    lists indices (an empty value hides every GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if all_gpus is None or visible is None:
        return all_gpus
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not all(v.isdigit() for v in wanted):  # UUIDs or MIG names: nothing to narrow by
        return all_gpus
    by_index = {g.index: g for g in all_gpus}
    return [by_index[int(v)] for v in wanted if int(v) in by_index]


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_memory() -> tuple[int, int] | None:
    """(total, available) bytes of host memory from /proc/meminfo; None where there is none."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) * 1024
    if "MemTotal" not in values:
        return None
    return values["MemTotal"], values.get("MemAvailable", values["MemTotal"])


def disk(path: str | Path) -> tuple[int, int] | None:
    """(total, free) bytes of the filesystem holding `path`; None when it does not exist."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return usage.total, usage.free
