"""This rank's packed micro-batches of a rollout batch, and forward-only passes over them.

Every rank receives the whole `RolloutBatch` and computes the same plan (packing.plan_micro_batches);
each then runs its own share. Forward-only passes (reference and old log-probs, critic values) use the
training plan, so that a sample is packed with the same neighbours as in its training forward and
the recomputed old log-probs equal the first training forward's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from temper.train.env import TrainEnv
from temper.train.packing import MicroBatch, Plan, pack, plan_micro_batches
from temper.train.trainable import StepTotals, reshard
from temper.train.work_progress import WorkProgress
from temper.types import RolloutBatch


class Batcher:
    """Micro-batching settings (--micro-batch-size, or --use-dynamic-batch-size --max-tokens-per-gpu).
    `progress`: where forward-only passes report their micro-batches (the owner's, for the live line)."""

    def __init__(self, cfg, env: TrainEnv, progress: WorkProgress | None = None):
        self.env = env
        self.progress = progress or WorkProgress()
        self.num_steps = cfg.num_steps_per_rollout or 1
        self.micro_batch_size = cfg.micro_batch_size
        self.max_tokens = cfg.max_tokens_per_gpu if cfg.use_dynamic_batch_size else None

    def plan(self, batch: RolloutBatch) -> Plan:
        return plan_micro_batches(
            batch.total_lengths,
            self.num_steps,
            self.env.world_size,
            micro_batch_size=self.micro_batch_size,
            max_tokens=self.max_tokens,
        )

    def steps(self, batch: RolloutBatch, per_token_loss: bool) -> Iterator[tuple[list[MicroBatch], StepTotals]]:
        """Per optimizer step of `batch`: this rank's micro-batches, and the step's totals over all ranks."""
        for step_plan in self.plan(batch):
            positions = [p for rank in step_plan for mb in rank for p in mb]
            yield self.local(batch, step_plan), StepTotals.of(batch, positions, per_token_loss)

    def local(self, batch: RolloutBatch, step_plan: list[list[list[int]]]) -> list[MicroBatch]:
        """This rank's micro-batches of one step, packed and on the device."""
        return [
            pack(batch.tokens, batch.response_lengths, positions, batch.rollout_routed_experts).to(self.env.device)
            for positions in step_plan[self.env.rank]
        ]

    @torch.no_grad()
    def forward_only(
        self, model: nn.Module, batch: RolloutBatch, fn: Callable[[MicroBatch], Tensor], stage: str = "log-probs"
    ) -> list[Tensor]:
        """fn(mb) -> [Tr] per micro-batch of this rank, cut per sample and gathered from all ranks.

        Returns one [R_i] fp32 CPU tensor per sample of `batch`, identical on every rank. The pass is
        `stage` of the train phase in `progress`.
        """
        model.eval()
        local: dict[int, Tensor] = {}
        plan = self.plan(batch)
        total = sum(len(step_plan[self.env.rank]) for step_plan in plan)
        with self.progress.stage("train", stage, total=total, unit="micro-batches"):
            for step_plan in plan:
                for mb in self.local(batch, step_plan):
                    out = fn(mb).float().cpu()
                    if not mb.is_padding:
                        local.update(zip(mb.positions, mb.split(out)))
                    self.progress.advance(tokens=mb.num_tokens)
        reshard(model)  # the root (and, on one rank, every layer) stays gathered after a forward: parallelize.py
        merged: dict[int, Tensor] = {}
        for part in self.env.all_gather_objects(local):
            merged.update(part)
        return [merged[i].clone() for i in range(len(batch))]
