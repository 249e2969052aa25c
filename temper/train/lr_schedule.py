"""Learning-rate schedule: linear warmup, then constant, linear or cosine decay to --min-lr.

For optimizer step s (0-based):
  s < warmup:  lr = max_lr · (s + 1) / warmup
  otherwise:   p = min(1, (s − warmup) / (decay_iters − warmup))
               constant: max_lr;  linear: min_lr + (max_lr − min_lr)(1 − p);
               cosine: min_lr + (max_lr − min_lr) · ½(1 + cos πp)
Departure from Megatron: warmup starts at max_lr / warmup for the first step rather than at 0, so
no step is spent with a zero learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer

LR_DECAY_STYLES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """The schedule as a pure function of the step (`lr_at`)."""

    max_lr: float
    min_lr: float = 0.0
    warmup_iters: int = 0
    decay_iters: int | None = None
    style: str = "constant"

    def __post_init__(self) -> None:
        if self.style not in LR_DECAY_STYLES:
            raise ValueError(f"--lr-decay-style {self.style!r} is not one of {', '.join(LR_DECAY_STYLES)}")
        if self.warmup_iters < 0 or self.min_lr < 0 or self.max_lr < 0:
            raise ValueError("--lr, --min-lr and --lr-warmup-iters must be >= 0")
        if self.style != "constant":
            if self.decay_iters is None:
                raise ValueError(
                    f"--lr-decay-style {self.style} needs the number of steps to decay over: give --lr-decay-iters "
                    "or --num-rollout (decay over num_rollout x num_steps_per_rollout steps)"
                )
            if self.decay_iters <= self.warmup_iters:
                raise ValueError(
                    f"--lr-decay-iters ({self.decay_iters}) must exceed --lr-warmup-iters ({self.warmup_iters})"
                )
            if self.min_lr > self.max_lr:
                raise ValueError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.max_lr})")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_iters:
            return self.max_lr * (step + 1) / self.warmup_iters
        if self.style == "constant":
            return self.max_lr
        progress = min(1.0, (step - self.warmup_iters) / (self.decay_iters - self.warmup_iters))
        if self.style == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.max_lr - self.min_lr) * factor


class LRScheduler:
    """Sets the optimizer's learning rate from an `LRSchedule`; `step()` after each optimizer step."""

    def __init__(self, optimizer: Optimizer, schedule: LRSchedule):
        self.optimizer = optimizer
        self.schedule = schedule
        self.num_steps = 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.schedule.lr_at(self.num_steps)

    def step(self) -> None:
        self.num_steps += 1
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps}

    def load_state_dict(self, state: dict) -> None:
        self.num_steps = int(state["num_steps"])
        self._apply()
