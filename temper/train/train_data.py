"""What the optimizer steps of one rollout consume, and the advantages that go into it.

Per-sample tensors travel as lists of [R_i] fp32 tensors (one entry per response token, in the
order of the rollout batch); `pad` turns a selection of them into the padded [B, T] layout that
`temper.algo` works on.

Reward normalization is NOT done here: `RolloutBatch.rewards` arrive already group-normalized by the
rollout manager (slime's place for it, where `--custom-reward-post-process-path` can replace it, and
which sees whole groups), so the advantage estimators run with `rewards_normalization=False`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from temper.algo import compute_advantages_and_returns, compute_approx_kl
from temper.train.packing import to_device
from temper.types import RolloutBatch


@dataclass
class TrainData:
    """One rollout prepared for training. Lists hold one [R_i] fp32 tensor per sample of `batch`."""

    rollout_id: int
    batch: RolloutBatch
    advantages: list[Tensor] | None = None
    """A_t (None for SFT)."""
    returns: list[Tensor] | None = None
    """Value targets (PPO's GAE returns; equal to the advantages for GRPO-like estimators)."""
    old_log_probs: list[Tensor] | None = None
    """Log-probs of the policy before this rollout's updates; None: recomputing them was skipped
    (one optimizer step per rollout), so the training forward uses its own detached log-probs."""
    ref_log_probs: list[Tensor] | None = None
    values: list[Tensor] | None = None
    """The critic's values before its update (PPO)."""


def pad(tensors: list[Tensor], positions: list[int] | None = None) -> Tensor:
    """[B, T_max] zero-padded stack of `tensors` (all of them, or those at `positions`); T_max >= 1."""
    chosen = tensors if positions is None else [tensors[p] for p in positions]
    width = max([1] + [len(t) for t in chosen])
    out = torch.zeros(len(chosen), width)
    for row, t in zip(out, chosen):
        row[: len(t)] = t
    return out


def pad_flat(flat: Tensor, lengths: list[int]) -> Tensor:
    """[Tr] → [B, max(1, max R_i)] zero-padded, differentiable. The scatter index is built on the host
    and copied without waiting for the device (no sync in the middle of a training step)."""
    sizes = torch.tensor(lengths)
    rows = torch.repeat_interleave(torch.arange(len(lengths)), sizes)
    cols = torch.arange(int(sizes.sum())) - (sizes.cumsum(0) - sizes)[rows]
    rows, cols = to_device(rows, flat.device), to_device(cols, flat.device)
    return flat.new_zeros(len(lengths), max([1, *lengths])).index_put((rows, cols), flat)


def unpad(padded: Tensor, lengths: list[int]) -> list[Tensor]:
    return [row[:n].clone() for row, n in zip(padded, lengths)]


def compute_advantages(
    cfg,
    batch: RolloutBatch,
    *,
    old_log_probs: list[Tensor] | None = None,
    ref_log_probs: list[Tensor] | None = None,
    values: list[Tensor] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """(advantages, returns) of every sample via `temper.algo.compute_advantages_and_returns`.

    cfg: the run's Config (flat access: advantage_estimator, kl_coef, kl_loss_type, gamma, lambd,
    normalize_advantages, ppo_mask_tool_tokens). The per-token KL(old‖ref) that shapes rewards when
    kl_coef ≠ 0 uses --kl-loss-type. PPO's token rewards span every response token, as slime's, unless
    --ppo-mask-tool-tokens. Runs on the full batch, identically on every rank, so whitening
    (--normalize-advantages) sees every sample without a collective.
    """
    kl = None
    if cfg.kl_coef != 0:
        if old_log_probs is None or ref_log_probs is None:
            raise ValueError("--kl-coef needs old and reference log-probs to shape the rewards")
        kl = compute_approx_kl(pad(old_log_probs), pad(ref_log_probs), cfg.kl_loss_type)
    advantages, returns = compute_advantages_and_returns(
        cfg.advantage_estimator,
        batch.rewards.float(),
        pad(batch.loss_masks),
        group_index=batch.group_indices,
        kl=kl,
        values=pad(values) if values is not None else None,
        kl_coef=cfg.kl_coef,
        gamma=cfg.gamma,
        lambd=cfg.lambd,
        rewards_normalization=False,
        normalize_advantages=cfg.normalize_advantages,
        response_mask=None if cfg.ppo_mask_tool_tokens else pad([torch.ones(n) for n in batch.response_lengths]),
    )
    return unpad(advantages, batch.response_lengths), unpad(returns, batch.response_lengths)
