"""The frozen reference policy: log-probs for the KL loss (--use-kl-loss) and KL-shaped rewards (--kl-coef)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from temper.train.batcher import Batcher
from temper.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from temper.train.env import TrainEnv
from temper.train.hf_model import load_causal_lm, policy_log_probs
from temper.train.parallelize import hf_name, parallelize
from temper.train.trainable import HostCopy, reshard
from temper.train.work_progress import WorkProgress
from temper.types import RolloutBatch


class ReferenceModel:
    """A sharded, gradient-free copy of the initial policy (or of --ref-load).

    On GPU its weights are bf16 and, with `offload=True`, live in pinned CPU memory between uses
    (`HostCopy`). --ref-load may be a Hugging Face folder or a temper checkpoint (its actor weights).
    """

    def __init__(
        self, cfg, env: TrainEnv, *, attn_implementation: str | None = None, offload: bool = False,
        progress: WorkProgress | None = None,
    ):  # fmt: skip
        self.cfg = cfg
        self.env = env
        self.host = HostCopy() if offload and env.is_cuda else None
        dtype = torch.bfloat16 if env.is_cuda else torch.float32
        source = cfg.ref_load if cfg.ref_load and (Path(cfg.ref_load) / "config.json").exists() else cfg.hf_checkpoint
        self.model = load_causal_lm(source, dtype, attn_implementation, router_dtype=cfg.moe_router_dtype)
        self.model.requires_grad_(False)
        parallelize(self.model, env.mesh)
        if env.is_cuda:
            self.model.to(env.device)  # what fully_shard leaves behind (buffers)
        if cfg.ref_load and source != cfg.ref_load:
            self.load(cfg.ref_load)
        self.batcher = Batcher(cfg, env, progress)  # the actor's progress: its log-probs are a stage of training
        self._park()

    def compute_log_probs(self, batch: RolloutBatch) -> list[Tensor]:
        """Reference log-probs [R_i] of every sample's response tokens (fp32, logits / temperature)."""
        with self._on_device():
            return self.batcher.forward_only(self.model, batch, self._log_probs, stage="ref log-probs")

    def _log_probs(self, mb) -> Tensor:
        return policy_log_probs(
            self.model, mb, temperature=self.cfg.rollout_temperature, chunk_size=self.cfg.log_probs_chunk_size
        )[0]

    @torch.no_grad()
    def copy_from(self, policy: nn.Module) -> None:
        """Overwrite the reference weights with `policy`'s (--ref-update-interval); same sharding."""
        with self._on_device():
            own = {hf_name(n): p for n, p in self.model.named_parameters()}
            for name, param in policy.named_parameters():
                target = own[hf_name(name)]
                source = param.to_local() if isinstance(param, DTensor) else param
                local = target.to_local() if isinstance(target, DTensor) else target
                local.copy_(source)

    def save(self, path: str | Path) -> None:
        with self._on_device():
            save_checkpoint(path, self.model, None, {}, self.env)

    def load(self, path: str | Path) -> None:
        found = resolve_checkpoint(path, "ref", "actor")
        if found is None:
            raise FileNotFoundError(f"--ref-load {path}: neither a Hugging Face folder nor a temper checkpoint")
        with self._on_device():
            load_checkpoint(found, self.model, None, self.env, restore_rng=False)

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """The weights on the device for the block; parked again after it when offloaded."""
        if self.host is not None and self.host.parked:
            self.host.onload()
        try:
            yield
        finally:
            self._park()

    def _park(self) -> None:
        if self.host is not None and not self.host.parked:
            reshard(self.model)
            self.host.offload(list(self.model.parameters()))
            torch.cuda.empty_cache()
