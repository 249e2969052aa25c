"""Where a train worker runs: its rank in the data-parallel group, its device and device mesh.

The worker is built inside a process group that someone else initialized (the orchestration layer,
`torch.distributed.run`, or a test): NCCL means one CUDA device per rank, gloo means CPU. Every rank of
the default group is one data-parallel (FSDP) rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class TrainEnv:
    """rank / world_size of the data-parallel group; device of this rank; the 1-D FSDP mesh."""

    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh

    @classmethod
    def current(cls) -> TrainEnv:
        if not dist.is_initialized():
            raise RuntimeError(
                "the train worker needs an initialized torch.distributed process group "
                "(dist.init_process_group('gloo') on CPU, 'nccl' on GPU) before it is built"
            )
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        world_size = dist.get_world_size()
        mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp",))
        return cls(dist.get_rank(), world_size, device, mesh)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of `values` over ranks (returned on CPU in float64; the input is left unchanged)."""
        reduced = values.detach().to(self.device, torch.float64).clone()
        if self.world_size > 1:
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.cpu()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...]; tensors inside should be on CPU."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
