"""Process groups without the default group: a gloo or NCCL group over a `TCPStore`, and a broadcast.

The engine builds its groups this way (the tensor-parallel group, `tp_group.py`; the weight-update
group, `server/weight_update.py`) so that neither it nor the trainer that feeds it needs
``torch.distributed.init_process_group``, and several groups can share one process.
"""

from __future__ import annotations

import datetime

import torch
from torch.distributed import BroadcastOptions, PrefixStore, ProcessGroupGloo, Store


def new_process_group(store: Store, prefix: str, rank: int, size: int, nccl: bool, timeout: datetime.timedelta):
    """Rank `rank` of a group of `size` over `store` (keys under `prefix`/): NCCL for CUDA tensors, else
    gloo for CPU tensors. Blocks until every rank has joined."""
    prefixed = PrefixStore(f"{prefix}/", store)
    if nccl:
        from torch.distributed import ProcessGroupNCCL

        return ProcessGroupNCCL(prefixed, rank, size, ProcessGroupNCCL.Options())
    return ProcessGroupGloo(prefixed, rank, size, timeout)


def broadcast(pg, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Broadcast `tensor` in place from rank `src` of `pg`."""
    opts = BroadcastOptions()
    opts.rootRank = src
    pg.broadcast([tensor], opts).wait()
    return tensor
