"""Bounded waits on the run's Ray workers, and their stacks when one hangs.

Every call the driver waits on (start, train, weight sync, memory moves, save) goes through `wait_for`:
at most `--ray-call-timeout` seconds, then `RemoteTimeout` naming the operation and the workers that did
not finish. Before raising, it asks those workers for their stacks: each worker registered, at start
(`enable_stack_dumps`), Python's faulthandler on SIGUSR1 with a file of its own under
``<run dir>/stacks/``; the driver sends the signal to the stuck workers' processes (those on its own node;
a worker elsewhere is named with its node) and names the files in the error. Files that stayed empty are
removed when the cluster closes (`remove_empty_stack_files`).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STACK_SIGNAL = signal.SIGUSR1
_stack_files: list[Any] = []  # open for the worker's life: faulthandler writes to their descriptors


class RemoteTimeout(TimeoutError):
    """A Ray call that did not finish within --ray-call-timeout."""


class WorkerDied(RuntimeError):
    """A worker process of the run died (killed, crashed, out of memory) during a call the driver waited on."""


@dataclass(frozen=True)
class WorkerId:
    """What the driver knows of a worker to name it and reach it: `name` (e.g. "actor rank 0"), the host
    and process id it reported, and its stack file."""

    name: str
    host: str
    pid: int
    stack_file: str | None


def stacks_dir(cfg) -> Path | None:
    return Path(cfg.run_dir).resolve() / "stacks" if getattr(cfg, "run_dir", None) else None


def enable_stack_dumps(cfg, name: str) -> WorkerId:
    """In a worker process: on SIGUSR1, write every thread's stack to ``<run dir>/stacks/<name>.txt``.
    Returns the worker's id for the driver."""
    folder = stacks_dir(cfg)
    path = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name.replace(' ', '-')}.txt"
        handle = open(path, "w")  # noqa: SIM115 -- kept open for faulthandler
        _stack_files.append(handle)
        faulthandler.register(STACK_SIGNAL, file=handle, all_threads=True, chain=False)
    return WorkerId(name, socket.gethostname(), os.getpid(), str(path) if path else None)


def wait_for(refs: list, workers: list[WorkerId | None], operation: str, timeout_s: float | None) -> list:
    """`ray.get(refs)` (one ref per worker, in `workers`' order), bounded by `timeout_s` (None: no bound).
    RemoteTimeout names `operation` and the workers whose calls did not finish, after asking them for
    their stacks."""
    import ray

    if timeout_s is None or not refs:
        return _get(refs, workers, operation)
    _, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if not waiting:
        return _get(refs, workers, operation)
    stuck = [workers[i] if i < len(workers) else None for i, ref in enumerate(refs) if ref in waiting]
    raise RemoteTimeout(f"{operation}: {_describe(stuck)} did not finish within {timeout_s:g} s "
                        f"(--ray-call-timeout){dump_stacks(stuck)}")


def _get(refs: list, workers: list[WorkerId | None], operation: str) -> list:
    """`ray.get(refs)`; WorkerDied naming the worker when one's process died."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(refs)
    except RayActorError as e:
        dead = []
        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except RayActorError:
                dead.append(workers[i] if i < len(workers) else None)
            except Exception:  # noqa: BLE001 -- another worker's own error or a call still running: not dead
                pass
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WorkerDied(f"{operation}: {_describe(dead or [None])} died ({cause})") from e


def dump_stacks(workers: list[WorkerId | None], settle_s: float = 1.0) -> str:
    """Signal the workers on this host to write their stacks; the sentence naming the files ('' if none)."""
    here = socket.gethostname()
    files = []
    for worker in workers:
        if worker is None or worker.stack_file is None or worker.host != here:
            continue
        try:
            os.kill(worker.pid, STACK_SIGNAL)
            files.append(worker.stack_file)
        except OSError:
            continue
    if not files:
        return ""
    time.sleep(settle_s)  # faulthandler writes from the signal handler; give it a moment
    return "; their stacks are in " + ", ".join(files)


def remove_empty_stack_files(cfg) -> None:
    """The stack files no hang wrote to, and their folder if it is then empty."""
    folder = stacks_dir(cfg)
    if folder is None or not folder.is_dir():
        return
    for path in folder.glob("*.txt"):
        try:
            if path.stat().st_size == 0:
                path.unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: a hang wrote there


def _describe(workers: list[WorkerId | None]) -> str:
    names = [f"{w.name} (pid {w.pid} on {w.host})" if w else "a worker" for w in workers]
    return ", ".join(names) if names else "no worker"
