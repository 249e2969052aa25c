"""The PPO critic: a value model (ValueModel) with its own AdamW, trained with the clipped value loss.

values = critic.compute_values(batch)           # old values, before any update
data = actor.prepare(rollout_id, batch, values) # GAE turns rewards + values into advantages, returns
critic.update(data)                             # value loss against data.returns
if rollout_id >= args.num_critic_only_steps: actor.update(data)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from temper.algo import value_loss_function
from temper.train.batcher import Batcher
from temper.train.checkpoint import Resumed, iteration_dir, resolve_checkpoint
from temper.train.env import TrainEnv
from temper.train.packing import MicroBatch, to_device
from temper.train.train_data import TrainData, pad, pad_flat
from temper.train.trainable import StepTotals, TrainableModel, mean_over_steps, weigh
from temper.train.value_model import ValueModel
from temper.types import RolloutBatch


class Critic:
    """V(s_t) per response token. cfg: a validated Config; lr defaults to --lr (slime's --critic-lr)."""

    def __init__(
        self,
        cfg,
        *,
        lr: float | None = None,
        total_steps: int | None = None,
        attn_implementation: str | None = None,
    ):
        self.cfg = cfg
        self.env = TrainEnv.current()
        torch.manual_seed(cfg.seed)
        model = ValueModel.from_pretrained(cfg.hf_checkpoint, torch.float32, attn_implementation,
                                           router_dtype=cfg.moe_router_dtype)
        self.trainable = TrainableModel.shard(model, cfg, self.env, lr=lr, total_steps=total_steps)
        self.model = self.trainable.model
        self.progress = self.trainable.progress  # what this rank works on now (work_progress.py), for the live line
        self.batcher = Batcher(cfg, self.env, self.progress)
        self.step_metrics: list[dict[str, float]] = []

    def compute_values(self, batch: RolloutBatch) -> list[Tensor]:
        """Values [R_i] (fp32) of every sample's response tokens: the state before each token."""
        self.trainable.require_onloaded("Critic.compute_values")
        return self.batcher.forward_only(self.model, batch, self.model.values, stage="critic values")

    def update(self, data: TrainData) -> dict[str, float]:
        """--num-steps-per-rollout steps of the clipped value loss against `data.returns`."""
        if data.values is None or data.returns is None:
            raise ValueError("Critic.update needs data.values (compute_values) and data.returns (actor.prepare)")
        batch = data.batch
        self.trainable.require_onloaded("Critic.update")
        self.step_metrics = []
        steps = self.batcher.steps(batch, self.cfg.calculate_per_token_loss)
        for k, (micro_batches, totals) in enumerate(steps, start=1):
            loss = functools.partial(self._loss, data=data, totals=totals)
            self.step_metrics.append(
                self.trainable.step(micro_batches, loss, stage=f"critic step {k}/{self.batcher.num_steps}")
            )
        return mean_over_steps(self.step_metrics)

    def _loss(self, mb: MicroBatch, data: TrainData, totals: StepTotals) -> tuple[Tensor, dict[str, Tensor]]:
        values = pad_flat(self.model.values(mb), mb.response_lengths)

        def rows(tensors: list[Tensor]) -> Tensor:
            if mb.is_padding:
                return torch.zeros_like(values)
            return to_device(pad(tensors, mb.positions), self.env.device)[:, : values.shape[1]]

        loss, metrics = value_loss_function(
            values,
            rows(data.values),
            rows(data.returns),
            rows(data.batch.loss_masks),
            value_clip=self.cfg.value_clip,
            calculate_per_token_loss=self.cfg.calculate_per_token_loss,
        )
        metrics["loss"] = loss.detach()
        return weigh(loss, metrics, totals.shares(data.batch, mb), self.env.world_size)

    def save(self, rollout_id: int) -> Path:
        """Checkpoint into --save/iter_<rollout_id>/critic (call before the actor's save, which
        records the iteration as complete)."""
        path = iteration_dir(self.cfg.save, rollout_id) / "critic"
        with self.progress.stage("save", "critic checkpoint"):
            self.trainable.save(
                path, save_optimizer=not self.cfg.no_save_optim, extra={"rollout_id": rollout_id, "extra": {}}
            )
        return path

    def load(self, path: str | Path | None = None) -> Resumed | None:
        path = path or self.cfg.load
        found = resolve_checkpoint(path, "critic") if path else None
        if found is None:
            return None
        state: dict[str, Any] = self.trainable.load(found)
        return Resumed(state["rollout_id"], state["extra"], found)

    def offload(self) -> None:
        self.trainable.offload()

    def onload(self) -> None:
        self.trainable.onload()
