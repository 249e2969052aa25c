"""Resumable checkpoints with torch.distributed.checkpoint (DCP): every rank writes its own shards.

Layout (Megatron's tracker file, so `--load DIR` finds the newest checkpoint):

    DIR/latest_checkpointed_iteration.txt      "<rollout_id>"
    DIR/iter_0000007/<role>/model/             DCP: sharded model state (HF parameter names)
    DIR/iter_0000007/<role>/optimizer/         DCP: AdamW state (absent with --no-save-optim)
    DIR/iter_0000007/<role>/trainer_state.pt   rank 0: step counters, LR scheduler, caller's `extra`
    DIR/iter_0000007/<role>/rng/rank_<r>.pt    each rank's RNG states (torch, CUDA, python, numpy)

A checkpoint loads into any number of ranks (DCP reshards on load); RNG states are restored only
when the world size matches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer

from temper.train.env import TrainEnv

TRACKER_FILE = "latest_checkpointed_iteration.txt"


@dataclass(frozen=True)
class Resumed:
    """What a worker's `load()` found: the rollout the checkpoint was saved after, and the caller's
    `extra` dict given to `save()` (e.g. the data source's state)."""

    rollout_id: int
    extra: dict[str, Any]
    path: Path


def iteration_dir(root: str | Path, rollout_id: int) -> Path:
    return Path(root) / f"iter_{rollout_id:07d}"


def latest_iteration(root: str | Path) -> int | None:
    """The rollout id recorded in `root`'s tracker file, or None when `root` holds no checkpoint."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.exists():
        return None
    text = tracker.read_text().strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{tracker}: expected a rollout id (an integer), found {text!r}") from None


def resolve_checkpoint(path: str | Path, *roles: str) -> Path | None:
    """The folder of the first of `roles` found in a checkpoint given as a --save root (tracker file),
    an iter_* folder or a role folder itself.

    Returns None for a root without a tracker file (nothing saved yet: start from --hf-checkpoint).
    """
    path = Path(path)
    if (path / "model").is_dir():
        return path
    for role in roles:
        if (path / role / "model").is_dir():
            return path / role
    iteration = latest_iteration(path)
    if iteration is None:
        return None
    for role in roles:
        found = iteration_dir(path, iteration) / role
        if (found / "model").is_dir():
            return found
    raise FileNotFoundError(
        f"{path / TRACKER_FILE} names rollout {iteration} but {iteration_dir(path, iteration)} holds no "
        f"{' or '.join(roles)} checkpoint"
    )


def write_tracker(root: str | Path, rollout_id: int, env: TrainEnv) -> None:
    env.barrier()
    if env.rank == 0:
        tmp = Path(root) / (TRACKER_FILE + ".tmp")
        tmp.write_text(f"{rollout_id}\n")
        tmp.replace(Path(root) / TRACKER_FILE)
    env.barrier()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer | None,
    trainer_state: dict[str, Any],
    env: TrainEnv,
) -> None:
    """Write `model` (and `optimizer` unless None) shards, `trainer_state` and RNG states to `path`."""
    path = Path(path)
    dcp.save(get_model_state_dict(model), checkpoint_id=path / "model")
    if optimizer is not None:
        dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=path / "optimizer")
    (path / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), path / "rng" / f"rank_{env.rank}.pt")
    if env.rank == 0:
        torch.save({**trainer_state, "world_size": env.world_size}, path / "trainer_state.pt")
    env.barrier()


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer | None,
    env: TrainEnv,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load what `save_checkpoint` wrote into `model` / `optimizer`; returns the trainer state.

    The optimizer is left untouched when the checkpoint has no optimizer state (--no-save-optim).
    """
    path = Path(path)
    model_state = get_model_state_dict(model)
    _check_matches(path / "model", model_state)
    _read(model_state, path / "model")
    set_model_state_dict(model, model_state)
    if optimizer is not None and (path / "optimizer").is_dir():
        optim_state = get_optimizer_state_dict(model, optimizer)
        _read(optim_state, path / "optimizer")
        set_optimizer_state_dict(model, optimizer, optim_state)
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=False)
    rng_file = path / "rng" / f"rank_{env.rank}.pt"
    if restore_rng and trainer_state.get("world_size") == env.world_size and rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    env.barrier()
    return trainer_state


def _check_matches(folder: Path, model_state: dict[str, Any]) -> None:
    """ValueError unless the checkpoint in `folder` holds exactly the model's parameters, shape for shape
    (a checkpoint of another model would otherwise load in part, or fail deep inside DCP)."""
    try:
        stored = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 -- a missing or unreadable .metadata file, in whatever form
        raise ValueError(f"{folder}: no readable checkpoint metadata ({type(e).__name__}: {e}); the checkpoint is "
                         f"incomplete: load an earlier iter_* folder, or drop --load to start from "
                         f"--hf-checkpoint") from e
    ours = {name: tuple(t.shape) for name, t in model_state.items() if isinstance(t, torch.Tensor)}
    theirs = {name: tuple(md.size) for name, md in stored.items() if hasattr(md, "size")}
    wrong = [f"missing {n}" for n in sorted(ours.keys() - theirs.keys())]
    wrong += [f"unexpected {n}" for n in sorted(theirs.keys() - ours.keys())]
    wrong += [f"{n} {list(theirs[n])} (model: {list(ours[n])})" for n in sorted(ours.keys() & theirs.keys())
              if ours[n] != theirs[n]]  # fmt: skip
    if wrong:
        shown = "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        raise ValueError(f"{folder}: this checkpoint is of another model than --hf-checkpoint ({len(wrong)} "
                         f"differences: {shown}); pass the --hf-checkpoint it was trained from, or another --load")


def _read(state: dict[str, Any], folder: Path) -> None:
    """dcp.load, with a shard that cannot be read (cut short, overwritten) named as such."""
    try:
        dcp.load(state, checkpoint_id=folder)
    except dcp.CheckpointException as e:
        cause = next(iter(e.failures.values()), None)
        cause = cause[0] if isinstance(cause, tuple) else cause
        text = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        detail = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        raise ValueError(f"{folder}: its shards cannot be read ({detail}); the checkpoint is truncated or corrupt: "
                         f"load an earlier iter_* folder, or drop --load to start from --hf-checkpoint") from e


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
