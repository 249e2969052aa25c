"""`TPGroup`: one rank's view of the engine's tensor-parallel group, and the collectives the model uses.

Rank 0 is the engine's own process; ranks 1..N-1 are its worker processes (`tp_worker.py`), all on
one machine. The group is built without the default process group, as the weight-update group is
(`server/weight_update.py`): a `TCPStore` that rank 0 hosts on a free loopback port, and a
`ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (CUDA; rank r on GPU base + r) over it.

Collectives on tensors (`all_reduce`, `all_gather`, `broadcast`) go through the process group and
may run inside CUDA graphs. On CUDA, `enable_symmetric_memory` moves the all-reduces that fit a
buffer shared by the ranks (`SymmetricAllReduce`) off NCCL. Decisions taken once at start (which
kernels to use, the KV-cache size) are agreed on the host through the store (`agree_min`), where
rank 0 can keep watching its workers:
`watch` (rank 0 only) raises when a worker died or failed, so that no wait on the group hangs.
A group of size 1 has no store and no process group; its collectives are identities.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

import torch
from torch.distributed import PrefixStore, TCPStore

from temper.engine.process_group import broadcast, new_process_group

logger = logging.getLogger(__name__)

TIMEOUT_S = 300.0  # a collective or an agreement that waits longer than this is an error
POLL_S = 1e-4  # rank 0's wait for the device between looks at its workers
ABORT_TIMEOUT_S = 10.0  # see `TPGroup.close`
SYMMETRIC_ALIGN_BYTES = 16  # what `SymmetricAllReduce` takes: whole 16-byte vectors
_abandoned: list = []  # process groups whose abort did not return (see `TPGroup.close`)


class TPGroup:
    """rank, size, device (this rank's); `pg` and `store` are None for a group of one (`TPGroup()`)."""

    def __init__(self, device: torch.device | None = None, rank: int = 0, size: int = 1, pg=None,
                 store: TCPStore | None = None, watch: Callable[[], None] | None = None):
        device = device or torch.device("cpu")
        self.device, self.rank, self.size = device, rank, size
        self.pg, self.store, self.watch = pg, store, watch
        self.symmetric: SymmetricAllReduce | None = None

    @staticmethod
    def host_store(size: int) -> TCPStore:
        """Rank 0's store on a free loopback port (`store.port`), created before the workers start."""
        return TCPStore("127.0.0.1", 0, size, is_master=True, wait_for_workers=False,
                        timeout=datetime.timedelta(seconds=TIMEOUT_S))

    @classmethod
    def join(cls, port: int, rank: int, size: int, device: torch.device, store: TCPStore | None = None,
             watch: Callable[[], None] | None = None) -> TPGroup:
        """Join the group of `size` ranks whose store listens on `port` (rank 0 passes its `store`);
        returns once every rank has joined."""
        timeout = datetime.timedelta(seconds=TIMEOUT_S)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if store is None:
            store = TCPStore("127.0.0.1", port, size, is_master=False, timeout=timeout)
        group = cls(device, rank, size, None, store, watch)
        group.agree_min("joined", [0])  # every rank is alive before anyone blocks in the process group
        group.pg = new_process_group(store, "tp", rank, size, device.type == "cuda", timeout)
        return group

    def shard_range(self, full: int) -> tuple[int, int]:
        """(start, length) of this rank's part of `full` rows split over the ranks (the last part may
        be shorter when `full` does not divide)."""
        per = -(-full // self.size)
        start = min(self.rank * per, full)
        return start, min(per, full - start)

    # ---- collectives on tensors -------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place (every rank gets the same bits)."""
        if self.size > 1:
            if self.symmetric is not None and self.symmetric.takes(x):
                self.symmetric.all_reduce(x)
            else:
                self.pg.allreduce([x]).wait()
        return x

    def enable_symmetric_memory(self, dtype: torch.dtype, max_numel: int) -> str | None:
        """All-reduces of contiguous `dtype` tensors of up to `max_numel` elements through symmetric
        memory from now on (a collective: every rank calls it). Returns None when enabled, else why not
        (the same answer on every rank, which then keep NCCL)."""
        if self.size == 1 or self.device.type != "cuda":
            return "not a CUDA group of several ranks"
        reason = _symmetric_memory_unusable(self)
        if self.agree_min("symmetric_memory", [reason is None])[0] == 0:
            return reason or "another rank cannot use it"
        self.symmetric = SymmetricAllReduce(self, dtype, max_numel)
        return None

    def all_gather(self, x: torch.Tensor, dim: int, full: int) -> torch.Tensor:
        """Concatenate every rank's `x` along `dim` (each rank holding its `shard_range(full)`): the
        `full`-long tensor, the same on every rank."""
        if self.size == 1:
            return x
        part = x.movedim(dim, 0)
        per = -(-full // self.size)
        if part.shape[0] < per:  # the short last part of an uneven split
            part = torch.cat([part, part.new_zeros((per - part.shape[0], *part.shape[1:]))])
        out = part.new_empty((self.size * per, *part.shape[1:]))
        self.pg._allgather_base(out, part.contiguous()).wait()
        return out[:full].movedim(0, dim)

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return broadcast(self.pg, x, src) if self.size > 1 else x

    # ---- host agreement and waits ----------------------------------------------------------
    def agree_min(self, key: str, values: list[int]) -> list[int]:
        """The element-wise minimum of every rank's `values` (through the store; each key once)."""
        if self.size == 1:
            return list(values)
        self.store.set(f"agree/{key}/{self.rank}", json.dumps(list(values)))
        keys = [f"agree/{key}/{r}" for r in range(self.size)]
        deadline = time.monotonic() + TIMEOUT_S
        while not self.store.check(keys):
            if self.watch is not None:
                self.watch()
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensor-parallel rank {self.rank}: the other ranks did not reach {key!r} "
                                   f"within {TIMEOUT_S:.0f}s")
            time.sleep(0.01)
        return [min(column) for column in zip(*(json.loads(self.store.get(k)) for k in keys))]

    def wait(self, event: torch.cuda.Event) -> None:
        """Wait for `event`; rank 0 keeps watching its workers meanwhile (a dead rank would leave
        NCCL, and so this wait, blocked forever)."""
        if self.watch is None:
            event.synchronize()
            return
        next_look = time.monotonic()
        while not event.query():
            if time.monotonic() >= next_look:
                self.watch()
                next_look = time.monotonic() + 0.1
            time.sleep(POLL_S)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            self.wait(event)

    def close(self) -> None:
        """Leave the group. NCCL's communicators are aborted, not finalized: a finalize may wait on
        peers that are gone already (workers exit without closing, see `tp_worker`). The abort runs in
        a daemon thread given ABORT_TIMEOUT_S: on an H100 pair (torch 2.11) it was seen never to return
        after the group had run inside CUDA graphs, and a stuck abort must not hold up the caller; the
        group is then left to the process's exit (`_abandoned` keeps it from a destructor here)."""
        if self.symmetric is not None:
            self.symmetric.close()
            self.symmetric = None
        abort = getattr(self.pg, "abort", None) if self.device.type == "cuda" else None
        if abort is not None:
            thread = threading.Thread(target=_abort, args=(abort, self.rank), name="temper-tp-abort", daemon=True)
            thread.start()
            thread.join(ABORT_TIMEOUT_S)
            if thread.is_alive():
                logger.warning("tensor-parallel rank %d: the NCCL group did not abort within %.0f s; left to the "
                               "process's exit", self.rank, ABORT_TIMEOUT_S)
                _abandoned.append(self.pg)
        self.pg = self.store = None


def _abort(abort: Callable[[], None], rank: int) -> None:
    try:
        abort()
    except RuntimeError as e:
        logger.warning("tensor-parallel rank %d: aborting the NCCL group failed: %s", rank, e)


class SymmetricAllReduce:
    """A sum over the ranks of a CUDA group through a buffer every rank can read (torch's symmetric
    memory): each rank copies its tensor in, reduces its share of the elements from every rank's copy
    and gathers the others' shares (`torch.ops.symm_mem.two_shot_all_reduce_out`, a kernel that needs
    no NCCL call and runs inside CUDA graphs). Each element is summed once, by one rank, so every rank
    gets the same bits; with two ranks they are NCCL's bits too (a + b either way).

    torch finds a group's ranks and store through the process-group registry, which the engine's
    groups (made without the default group, see `process_group.py`) are not in: the group is
    registered under a name of its own, which `close` removes.
    """

    def __init__(self, group: TPGroup, dtype: torch.dtype, max_numel: int):
        from torch._C._distributed_c10d import ProcessGroup, _register_process_group
        from torch.distributed._symmetric_memory import _SymmetricMemory

        if group.rank == 0:
            group.store.set("symmetric_memory/name", f"temper-tp-{uuid.uuid4().hex[:12]}")
        self.name = group.store.get("symmetric_memory/name").decode()
        self.dtype, self.max_numel = dtype, max_numel
        store = PrefixStore(f"{self.name}/", group.store)
        _SymmetricMemory.set_group_info(self.name, group.rank, group.size, store)
        registered = ProcessGroup(store, group.rank, group.size)
        registered._register_backend(group.device, ProcessGroup.BackendType.NCCL, group.pg)
        registered._set_default_backend(ProcessGroup.BackendType.NCCL)
        registered._set_group_name(self.name)
        _register_process_group(self.name, registered)
        self.buffer = _SymmetricMemory.empty_strided_p2p((max_numel,), (1,), dtype, group.device)
        _SymmetricMemory.rendezvous(self.buffer, self.name)
        if group.rank == 0:
            logger.info("tensor parallel: all-reduces of up to %.1f MB through symmetric memory, larger ones "
                        "through NCCL", max_numel * dtype.itemsize / 2**20)

    def takes(self, x: torch.Tensor) -> bool:
        """Whether `x` goes this way (the same answer on every rank: the ranks' tensors have one shape)."""
        return (x.dtype == self.dtype and x.is_contiguous() and x.numel() <= self.max_numel
                and x.numel() * x.element_size() % SYMMETRIC_ALIGN_BYTES == 0)

    def all_reduce(self, x: torch.Tensor) -> None:
        staged = self.buffer[: x.numel()].view(x.shape)
        staged.copy_(x)
        torch.ops.symm_mem.two_shot_all_reduce_out(staged, "sum", self.name, x)

    def close(self) -> None:
        from torch._C._distributed_c10d import _unregister_process_group

        _unregister_process_group(self.name)
        self.buffer = None


def _symmetric_memory_unusable(group: TPGroup) -> str | None:
    """Why this rank cannot use `SymmetricAllReduce`, or None."""
    if not hasattr(torch.ops.symm_mem, "two_shot_all_reduce_out"):
        return f"torch {torch.__version__} has no torch.ops.symm_mem.two_shot_all_reduce_out"
    first = group.device.index - group.rank  # rank r is on GPU first + r
    for r in range(group.size):
        other = first + r
        if r != group.rank and not torch.cuda.can_device_access_peer(group.device, other):
            return f"GPU {group.device.index} cannot read GPU {other}'s memory (no peer access)"
    return None
