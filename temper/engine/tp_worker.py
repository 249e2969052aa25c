"""Tensor-parallel ranks 1..N-1 of the engine: the worker processes, and rank 0's handle on them.

`TPWorkers` (rank 0, owned by the engine's `ModelRunner`) hosts the group's store, starts one process
per rank (torch.multiprocessing "spawn"), joins the group, and is the control channel: one pipe per
worker carrying `Command`s, each a `ModelRunner` method and its small arguments (a step's `StepPlan`,
a weight name). Steps go without waiting: the collectives inside them keep the ranks in step.
Commands that change state (weights, memory) wait for every worker's reply.

A worker (`worker_main`) builds its own `ModelRunner` shard, then runs commands in order until
"shutdown", or until rank 0 is gone. An error there goes back on its pipe as one line: a ValueError or
OSError of a replying command (a bad weight, a missing folder) is that command's answer and the
worker goes on; any other error ends the worker. Rank 0 then raises RuntimeError naming the rank and
the error, and so does every later call: the ranks are out of step and the engine must be restarted.
Waits never hang on a dead worker: pipe reads poll with timeouts, and rank 0's waits on the group
(`TPGroup.watch`) look at the workers while they wait.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from temper.engine.engine_args import EngineArgs
from temper.engine.tp_group import TPGroup

logger = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 600.0  # longest a state-changing command may take on a worker (a large weight load)
FAILURE_GRACE_S = 5.0  # after rank 0's part failed: how long to wait for the worker failure behind it
STOP_TIMEOUT_S = 20.0  # a worker's exit after "shutdown" (its group's abort is bounded by tp_group.ABORT_TIMEOUT_S)


@dataclass
class Command:
    """``ModelRunner.<method>(*args)`` on every worker; `reply`: rank 0 waits for each one's answer."""

    method: str
    args: tuple = ()
    reply: bool = False


def rank_device(base: torch.device, rank: int, size: int) -> torch.device:
    """Rank `rank`'s device: the CPU, or GPU base.index + rank (ValueError if it does not exist)."""
    if base.type != "cuda":
        return base
    count = torch.cuda.device_count()
    if base.index + size > count:
        raise ValueError(
            f"EngineArgs.tensor_parallel_size={size} on {base} needs GPUs {base.index}..{base.index + size - 1}, "
            f"but {count} are visible; use a smaller size or a lower device index"
        )
    return torch.device("cuda", base.index + rank)


class TPWorkers:
    """Rank 0's handle on ranks 1..N-1 (see the module docstring). `group`: rank 0's `TPGroup`."""

    def __init__(self, args: EngineArgs, hf_config, max_model_len: int):
        size = args.tensor_parallel_size
        devices = [rank_device(args.torch_device(), rank, size) for rank in range(size)]
        store = TPGroup.host_store(size)
        ctx = torch.multiprocessing.get_context("spawn")
        self.processes, self.conns = [], []
        self.error: RuntimeError | None = None
        self.group: TPGroup | None = None
        # CPU: each worker takes this process's share of threads. More would oversubscribe the cores,
        # and OpenMP's spin-waits then slow every rank (a 2-core machine, TP=2: 68 -> 15 ms a step).
        threads = max(1, torch.get_num_threads() // size)
        for rank in range(1, size):
            conn, child = ctx.Pipe()
            process = ctx.Process(
                target=worker_main, name=f"temper-tp-rank{rank}", daemon=True,
                args=(args, hf_config, max_model_len, rank, store.port, devices[rank], child, threads),
            )
            process.start()
            child.close()  # so that a dead worker's pipe reads as closed here
            self.processes.append(process)
            self.conns.append(conn)
        self._finalizer = weakref.finalize(self, _stop, self.processes, self.conns)
        try:
            self.group = TPGroup.join(store.port, 0, size, devices[0], store=store, watch=self.check)
        except BaseException as e:
            error = self.broken(e)
            self.close()
            raise error from e

    def _ranks(self):
        return enumerate(zip(self.processes, self.conns), start=1)

    # ---- sending ------------------------------------------------------------------------------
    def send(self, method: str, args: tuple = (), reply: bool = False) -> None:
        self.check()
        command = Command(method, args, reply)
        for rank, (_process, conn) in self._ranks():
            try:
                conn.send(command)
            except OSError:
                raise self._fail(rank, "died") from None

    def send_weight_header(self, name: str | None, shape: tuple[int, ...]) -> None:
        """One tensor of `load_weights` (its broadcast follows), or the end (name None)."""
        for rank, (_process, conn) in self._ranks():
            try:
                conn.send((name, shape))
            except OSError:
                raise self._fail(rank, "died") from None

    # ---- answers and failures -------------------------------------------------------------------
    def check(self) -> None:
        """Raise if a worker died or reported an error (rank 0's watch while it waits on the group)."""
        if self.error is not None:
            raise self.error
        for rank, (process, conn) in self._ranks():
            if conn.poll():
                self._read(rank)
            elif not process.is_alive():
                raise self._fail(rank, "died")

    def wait_replies(self, quiet: bool = False) -> None:
        """Every worker's answer to the last replying command; ValueError listing the workers' errors
        (unless `quiet`: rank 0 raises its own)."""
        errors = []
        for rank, (process, conn) in self._ranks():
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            while not conn.poll(0.1):
                if not process.is_alive():
                    raise self._fail(rank, "died")
                if time.monotonic() > deadline:
                    raise self._fail(rank, f"did not answer within {REPLY_TIMEOUT_S:.0f}s")
            error = self._read(rank)
            if error:
                errors.append(f"rank {rank}: {error}")
        if errors and not quiet:
            raise ValueError(f"tensor-parallel {'; '.join(errors)}")

    def _read(self, rank: int) -> str | None:
        """One message from `rank`: None (done), the text of a recoverable error; a fatal one raises."""
        try:
            status, fatal, text = self.conns[rank - 1].recv()
        except (EOFError, OSError):
            raise self._fail(rank, "died") from None
        if status == "ok":
            return None
        if fatal:
            raise self._fail(rank, f"failed: {text}")
        return text

    def _fail(self, rank: int, what: str) -> RuntimeError:
        process = self.processes[rank - 1]
        if what == "died":
            process.join(1.0)
            code = process.exitcode
            what = "died" if code is None else f"died with exit code {code}"
            if code is not None and code < 0:
                what += f" ({signal.Signals(-code).name})"
        self.error = RuntimeError(f"tensor-parallel worker rank {rank} (pid {process.pid}) {what}; the engine "
                                  "stopped, restart it")
        return self.error

    def broken(self, cause: BaseException) -> RuntimeError:
        """The error to raise after rank 0's part of a mirrored operation failed with `cause`: the
        failure of a worker (a dead peer is what usually breaks a collective), waited for a few
        seconds, else `cause` itself. Either way the engine stops: the ranks are out of step."""
        deadline = time.monotonic() + FAILURE_GRACE_S
        while self.error is None and time.monotonic() < deadline:
            try:
                self.check()
            except RuntimeError:
                break
            time.sleep(0.05)
        if self.error is None:
            self.error = RuntimeError(f"tensor-parallel rank 0 failed ({type(cause).__name__}: {cause}); the "
                                      "ranks are out of step: the engine stopped, restart it")
        return self.error

    def close(self) -> None:
        """Stop the workers and leave the group. Every rank aborts its NCCL communicator at the same
        time (the workers on "shutdown", rank 0 right after sending it): an abort can wait on its
        peers' (pytorch/pytorch#119215). Then the workers are joined, and killed if they linger."""
        if self.error is None:
            self.error = RuntimeError("the engine is closed")
        _send_shutdown(self.conns)
        if self.group is not None:
            self.group.close()
            self.group = None
        self._finalizer()


def _send_shutdown(conns) -> None:
    for conn in conns:
        try:
            conn.send(Command("shutdown"))
        except OSError:  # the worker is gone already
            pass


def _stop(processes, conns) -> None:
    _send_shutdown(conns)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5.0)
    for conn in conns:
        conn.close()


# ---- the worker process ------------------------------------------------------------------------


def worker_main(args: EngineArgs, hf_config, max_model_len: int, rank: int, port: int, device: torch.device,
                conn, threads: int) -> None:
    """Entry point of tensor-parallel rank `rank` (a spawned process)."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s tp-rank{rank} %(name)s: %(message)s")
    torch.set_num_threads(threads)
    _exit_with_parent()
    from temper.engine.model_runner import ModelRunner

    try:
        group = TPGroup.join(port, rank, args.tensor_parallel_size, device)
        runner = ModelRunner(args, hf_config, max_model_len, group)
        code = _serve(runner, conn)
        if code == 0:  # an orderly stop: abort the communicator together with rank 0 (`TPWorkers.close`)
            runner.release_group()
    except BaseException as e:  # noqa: BLE001 -- reported to rank 0, which raises it
        _report(conn, e, fatal=True)
        code = 1
    # No destructors: tearing down a process group whose peers may be gone can block.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(runner, conn) -> int:
    """Run commands until "shutdown" (0) or rank 0's end of the pipe closes (0), or a fatal error (1)."""
    tokens = None  # this rank's last sampled tokens: the pending inputs of the next step
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            return 0
        if command.method == "shutdown":
            return 0
        try:
            if command.method == "execute":
                (plan,) = command.args
                runner.inputs.receive(plan)
                tokens = runner.execute(plan, tokens)[0]
            elif command.method == "receive_weights":
                runner.receive_weights(_headers(conn))
            else:
                getattr(runner, command.method)(*command.args)
        except (ValueError, OSError) as e:
            if not command.reply:
                _report(conn, e, fatal=True)
                return 1
            _report(conn, e, fatal=False)
            continue
        except BaseException as e:  # noqa: BLE001 -- reported to rank 0, which raises it
            _report(conn, e, fatal=True)
            return 1
        if command.reply:
            conn.send(("ok", False, ""))


def _headers(conn) -> Iterator[tuple[str, tuple[int, ...]]]:
    while True:
        name, shape = conn.recv()
        if name is None:
            return
        yield name, shape


def _report(conn, error: BaseException, fatal: bool) -> None:
    if fatal:
        logger.error("tensor-parallel worker failed", exc_info=error)
    try:
        conn.send(("error", fatal, f"{type(error).__name__}: {error}"))
    except OSError:
        pass


def _exit_with_parent() -> None:
    """End this process when rank 0's process is gone (it may be blocked in a collective forever)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="temper-tp-parent-watch", daemon=True).start()
