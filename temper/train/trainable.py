"""An FSDP-sharded model with its AdamW optimizer and LR schedule, and the optimizer step over micro-batches.

Shared by the actor and the critic (each owns one). The step's loss is the full-step aggregate of
temper.algo: each micro-batch's loss, computed by algo over that micro-batch's samples, is
multiplied by its share of the step (samples, or trained tokens with --calculate-per-token-loss) and
by the data-parallel world size (FSDP averages gradients over ranks), so that the accumulated
gradient equals the gradient of the aggregate over all samples of the step on all ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from temper.cluster.memory_plan import keeps_gathered
from temper.train.checkpoint import load_checkpoint, save_checkpoint
from temper.train.env import TrainEnv
from temper.train.lr_schedule import LRSchedule, LRScheduler
from temper.train.packing import MicroBatch
from temper.train.parallelize import compile_by_default, parallelize
from temper.train.work_progress import WorkProgress
from temper.types import RolloutBatch

logger = logging.getLogger("temper.train")

# Metrics aggregated like the loss (sample mean, or token mean with --calculate-per-token-loss); every
# other metric is a token mean over the step's trained tokens.
LOSS_LIKE_METRICS = frozenset({"loss", "pg_loss", "kl_loss", "entropy", "sft_loss", "value_loss"})

LossFn = Callable[[MicroBatch], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class StepTotals:
    """Samples and trained tokens of one optimizer step over all ranks: the aggregates' denominators.

    `tokens` counts trained tokens (the token-mean metrics' denominator); `loss_tokens` is the per-token
    loss's denominator, slime's Σ_i max(trained tokens of i, 1), in which a sample with no trained
    token still counts once (temper.algo.aggregation.token_count).
    """

    samples: int
    tokens: int
    per_token_loss: bool
    loss_tokens: int = 0

    @classmethod
    def of(cls, batch: RolloutBatch, positions: list[int], per_token_loss: bool) -> StepTotals:
        counts = [int(batch.loss_masks[p].sum().item()) for p in positions]
        return cls(len(positions), sum(counts), per_token_loss, sum(max(n, 1) for n in counts))

    def shares(self, batch: RolloutBatch, mb: MicroBatch) -> tuple[float, float]:
        """(loss share, token share) of micro-batch `mb` in the step; (0, 0) for padding."""
        if mb.is_padding:
            return 0.0, 0.0
        counts = [batch.loss_masks[p].sum().item() for p in mb.positions]
        tokens = sum(counts) / max(self.tokens, 1)
        if not self.per_token_loss:
            return len(mb.positions) / self.samples, tokens
        return sum(max(n, 1) for n in counts) / max(self.loss_tokens, 1), tokens


def weigh(
    loss: Tensor, metrics: dict[str, Tensor], shares: tuple[float, float], world_size: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scale a micro-batch's loss and metrics by its share of the step (see trainable.py)."""
    loss_share, token_share = shares
    weighted = {
        name: value.detach() * (loss_share if name in LOSS_LIKE_METRICS else token_share)
        for name, value in metrics.items()
    }
    return loss * (loss_share * world_size), weighted


def mean_over_steps(steps: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for step in steps for name in step})
    out = {name: sum(step.get(name, 0.0) for step in steps) / len(steps) for name in names}
    if steps:
        out["skipped_steps"] = steps[-1].get("skipped_steps", 0.0)
    return out


class TrainableModel:
    """`model` (already parallelized), AdamW over its sharded parameters, an LR scheduler, counters."""

    @classmethod
    def shard(
        cls, model: nn.Module, cfg, env: TrainEnv, *, lr: float | None = None, total_steps: int | None = None
    ) -> TrainableModel:
        """Parallelize an unsharded `model` for training (the one way every role does it) and wrap it.

        `total_steps` (for the LR schedule) defaults to every optimizer step of the run.
        """
        keep_gathered = keeps_gathered(env.world_size, sum(p.numel() for p in model.parameters()))
        sharded = parallelize(
            model,  # fully_shard moves each layer to the mesh's device as it shards it
            env.mesh,
            mixed_precision=env.is_cuda or cfg.bf16,
            activation_checkpointing=cfg.recompute_activations,
            compile_layers=compile_by_default(env.device),
            keep_gathered=keep_gathered,
        )
        if total_steps is None and cfg.num_rollout is not None:
            total_steps = cfg.num_rollout * (cfg.num_steps_per_rollout or 1)
        return cls(sharded, cfg, env, lr=lr, total_steps=total_steps, keep_gathered=keep_gathered)

    def __init__(
        self, model: nn.Module, cfg, env: TrainEnv, *, lr: float | None = None, total_steps: int | None = None,
        keep_gathered: bool = False,
    ):
        self.model = model
        self.keep_gathered = keep_gathered  # parallelize.py: one rank, layers gathered through a step
        self.env = env
        self.clip_grad = cfg.clip_grad
        # Megatron's rule: no weight decay on biases and norm weights (the 1-D parameters).
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=cfg.lr if lr is None else lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            fused=env.is_cuda or None,  # one kernel for every parameter's update on GPU
        )
        schedule = LRSchedule(
            max_lr=cfg.lr if lr is None else lr,
            min_lr=cfg.min_lr,
            warmup_iters=cfg.lr_warmup_iters,
            decay_iters=cfg.lr_decay_iters or total_steps,
            style=cfg.lr_decay_style,
        )
        self.scheduler = LRScheduler(self.optimizer, schedule)
        self.global_step = 0
        self.skipped_steps = 0
        self.offloaded = False
        # --optimizer-cpu-offload: AdamW's state waits in pinned CPU memory outside the optimizer step, so the
        # forward and backward have its GPU memory (on a CPU run it is there already).
        self.optimizer_host = HostCopy() if cfg.optimizer_cpu_offload and env.is_cuda else None
        self.progress = WorkProgress()  # the owner's stages (its steps, log-probs, saves) for the live line

    def step(self, micro_batches: list[MicroBatch], loss_fn: LossFn, stage: str = "step") -> dict[str, float]:
        """One optimizer step: forward+backward of each micro-batch, clip, NaN/inf guard, AdamW, LR.

        `loss_fn(mb)` returns (loss already scaled to its share of the step, metrics already weighted
        so that their sum over micro-batches and ranks is the step's value). The micro-batches are stage
        `stage` of the train phase in `progress`: each backward handed to the device advances it by one
        micro-batch and its tokens.
        """
        with self.progress.stage("train", stage, total=len(micro_batches), unit="micro-batches"):
            sums = self._accumulate(micro_batches, loss_fn)
        metrics = self._reduce(sums)
        grad_norm = self._clip_grad_norm()
        metrics["lr"] = self.scheduler.lr
        metrics["grad_norm"] = grad_norm
        if math.isfinite(grad_norm) and math.isfinite(metrics.get("loss", 0.0)):
            with self.optimizer_state_on_device():
                self.optimizer.step()
            self.scheduler.step()
        else:
            self.skipped_steps += 1
            logger.warning(
                "optimizer step %d skipped: loss %s, gradient norm %s (%d steps skipped so far)",
                self.global_step,
                metrics.get("loss"),
                grad_norm,
                self.skipped_steps,
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        metrics["skipped_steps"] = float(self.skipped_steps)
        return metrics

    def _accumulate(self, micro_batches: list[MicroBatch], loss_fn: LossFn) -> dict[str, Tensor]:
        """Forward and backward of every micro-batch (the gradients accumulate); their metrics summed on the
        device."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}
        try:
            for i, mb in enumerate(micro_batches):
                self._accumulate_gathered(self.keep_gathered and i < len(micro_batches) - 1)
                loss, metrics = loss_fn(mb)
                loss.backward()
                for name, value in metrics.items():  # summed on the device: no sync per micro-batch
                    sums[name] = sums.get(name, 0.0) + value.detach().double()
                self.progress.advance(tokens=mb.num_tokens)
        finally:
            self._accumulate_gathered(False)
        return sums

    def _accumulate_gathered(self, on: bool) -> None:
        """On: this micro-batch's backward keeps the parameters gathered and its gradients unsharded, to
        be reduced with the next one's (parallelize.py, one rank). Off: FSDP's default."""
        if self.keep_gathered:
            self.model.set_requires_gradient_sync(not on)
            self.model.set_reshard_after_backward(not on)

    def _reduce(self, sums: dict[str, Tensor]) -> dict[str, float]:
        names = sorted(sums)
        if not names:
            return {}
        totals = self.env.all_reduce_sum(torch.stack([torch.as_tensor(sums[n], device=self.env.device) for n in names]))
        return {name: float(value) for name, value in zip(names, totals)}

    def _clip_grad_norm(self) -> float:
        """Global L2 norm of the gradients (over all shards); clipped to --clip-grad when > 0."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if self.clip_grad > 0 and torch.isfinite(total):
            torch.nn.utils.clip_grads_with_norm_(params, self.clip_grad, total)
        return float(total)

    # -- state ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "scheduler": self.scheduler.state_dict(),
        }

    def save(self, path: str | Path, *, save_optimizer: bool, extra: dict[str, Any]) -> None:
        with self.optimizer_state_on_device():
            save_checkpoint(
                path, self.model, self.optimizer if save_optimizer else None, {**self.state(), **extra}, self.env
            )

    def load(self, path: str | Path) -> dict[str, Any]:
        with self.optimizer_state_on_device():
            state = load_checkpoint(path, self.model, self.optimizer, self.env)
        self.global_step = state["global_step"]
        self.skipped_steps = state["skipped_steps"]
        self.scheduler.load_state_dict(state["scheduler"])
        return state

    # -- memory --------------------------------------------------------------------------------------

    _host: HostCopy | None = None  # the CPU side of offload, made at the first one

    def offload(self) -> None:
        """Parameters, gradients and optimizer state to CPU (colocation); a no-op on a CPU run.

        Through `HostCopy`: pinned buffers allocated at the first offload and reused, the copies
        overlapped, one synchronize; the freed GPU memory goes back to the device. `onload` restores
        the same bits into the same tensor objects."""
        if self.offloaded or not self.env.is_cuda:
            self.offloaded = True
            return
        reshard(self.model)
        if self._host is None:
            self._host = HostCopy()
        self._host.offload(self._state_tensors())
        torch.cuda.empty_cache()
        self.offloaded = True

    def require_onloaded(self, caller: str) -> None:
        if self.offloaded and self.env.is_cuda:
            raise RuntimeError(f"{caller}: the model is offloaded to CPU; call onload() first")

    def onload(self) -> None:
        if not self.offloaded:
            return
        if self.env.is_cuda:
            self._host.onload()
        self.offloaded = False

    @contextlib.contextmanager
    def optimizer_state_on_device(self) -> Iterator[None]:
        """With --optimizer-cpu-offload, AdamW's state on the GPU inside the block and back in CPU memory after
        it (the state made at the first step included); a plain block otherwise."""
        host = self.optimizer_host
        if host is None:
            yield
            return
        if host.parked:
            host.onload()
        try:
            yield
        finally:
            state = [t for per_param in self.optimizer.state.values() for t in per_param.values()]
            host.offload([t for t in state if isinstance(t, Tensor)])

    def _state_tensors(self) -> list[Tensor]:
        """What offload moves: parameters, their gradients (None between steps) and the optimizer's
        tensors (AdamW's `step` too where it lives on the GPU: fused)."""
        tensors = []
        for param in self.model.parameters():
            tensors += [param] if param.grad is None else [param, param.grad]
        for state in self.optimizer.state.values():
            tensors += [value for value in state.values() if isinstance(value, Tensor)]
        return tensors


def reshard(model: nn.Module) -> None:
    """Free FSDP's unsharded parameters where they are still gathered (the root keeps them after a
    forward), so that the module holds only its sharded parameters."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


CHUNK_BYTES = 2**26
"""HostCopy's pinned buffers come in chunks of this size: a power of two, which the pinned-memory
allocator does not round up (it rounds other sizes up to one, up to twice the host memory)."""


class HostCopy:
    """The storages of device tensors parked in pinned CPU memory, and brought back bit for bit.

    `offload(tensors)` copies each distinct `device_type` storage under `tensors` (whole storages:
    FSDP's padded shards included) into pinned CPU chunks, packed end to end (the chunks are allocated
    at the first offload and reused; more are added when the state grows), queues all copies without
    waiting, synchronizes once, then frees each storage in place (resized to 0 bytes). The tensors,
    their views and every alias (FSDP's flat shard and its DTensor views, the optimizer's references)
    stay the same objects, so `onload()` re-allocates each storage and copies the bytes back
    (non-blocking, one synchronize). Between the two, reading the tensors is an error (a crash on
    CPU). Tensors on other devices are left alone.
    """

    def __init__(self, device_type: str = "cuda", pin: bool = True, chunk_bytes: int = CHUNK_BYTES):
        self.device_type, self.pin, self.chunk_bytes = device_type, pin, chunk_bytes
        self.chunks: list[Tensor] = []
        self.parked: list[tuple[torch.UntypedStorage, int]] = []  # (storage, its bytes)

    @torch.no_grad()
    def offload(self, tensors: list[Tensor]) -> int:
        """Park the storages under `tensors`; returns the bytes freed on the device."""
        if self.parked:
            raise RuntimeError("HostCopy.offload: tensors are already parked; onload() them first")
        parked = [(storage, storage.nbytes()) for storage in self._storages(tensors)]
        total = sum(nbytes for _, nbytes in parked)
        while len(self.chunks) * self.chunk_bytes < total:
            self.chunks.append(torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=self.pin))
        for device, host in self._pieces(parked):
            host.copy_(device, non_blocking=True)
        self._synchronize(parked)
        for storage, _ in parked:
            storage.resize_(0)
        self.parked = parked
        return total

    @torch.no_grad()
    def onload(self) -> None:
        """Bring every parked storage back, same bytes, same tensor objects."""
        for storage, nbytes in self.parked:
            storage.resize_(nbytes)
        for device, host in self._pieces(self.parked):
            device.copy_(host, non_blocking=True)
        self._synchronize(self.parked)
        self.parked = []

    def _pieces(self, parked: list[tuple[torch.UntypedStorage, int]]) -> list[tuple[Tensor, Tensor]]:
        """(device bytes, host bytes) pairs that cover the storages laid end to end over the chunks."""
        pieces, position = [], 0
        for storage, nbytes in parked:
            device, done = _bytes_of(storage), 0
            while done < nbytes:
                chunk, offset = divmod(position, self.chunk_bytes)
                take = min(nbytes - done, self.chunk_bytes - offset)
                pieces.append((device[done : done + take], self.chunks[chunk][offset : offset + take]))
                done, position = done + take, position + take
        return pieces

    def _storages(self, tensors: list[Tensor]) -> list[torch.UntypedStorage]:
        """The distinct non-empty `device_type` storages under `tensors`, in first-seen order."""
        seen, storages = set(), []
        for tensor in tensors:
            local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
            storage = local.untyped_storage()
            if storage.device.type == self.device_type and storage.nbytes() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                storages.append(storage)
        return storages

    def _synchronize(self, parked: list[tuple[torch.UntypedStorage, int]]) -> None:
        if parked and self.device_type == "cuda":
            torch.cuda.synchronize(parked[0][0].device)


def _bytes_of(storage: torch.UntypedStorage) -> Tensor:
    """A uint8 tensor over all of `storage`."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
