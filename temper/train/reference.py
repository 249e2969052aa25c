"""The frozen reference policy: log-probs for the KL loss (--use-kl-loss) and KL-shaped rewards (--kl-coef)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from temper.train.batcher import Batcher
from temper.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from temper.train.env import TrainEnv
from temper.train.hf_model import load_causal_lm, policy_log_probs
from temper.train.parallelize import hf_name, parallelize
from temper.types import RolloutBatch


class ReferenceModel:
    """A sharded, gradient-free copy of the initial policy (or of --ref-load).

    On GPU its weights are bf16 and, with `offload=True`, live on CPU between passes. --ref-load may be
    a Hugging Face folder or a temper checkpoint (its actor weights).
    """

    def __init__(self, cfg, env: TrainEnv, *, attn_implementation: str | None = None, offload: bool = False):
        self.cfg = cfg
        self.env = env
        self.offload = offload and env.is_cuda
        dtype = torch.bfloat16 if env.is_cuda else torch.float32
        source = cfg.ref_load if cfg.ref_load and (Path(cfg.ref_load) / "config.json").exists() else cfg.hf_checkpoint
        self.model = load_causal_lm(source, dtype, attn_implementation)
        self.model.requires_grad_(False)
        parallelize(self.model, env.mesh)
        if cfg.ref_load and source != cfg.ref_load:
            self.load(cfg.ref_load)
        self.batcher = Batcher(cfg, env)
        self._to(torch.device("cpu") if self.offload else env.device)

    def compute_log_probs(self, batch: RolloutBatch) -> list[Tensor]:
        """Reference log-probs [R_i] of every sample's response tokens (fp32, logits / temperature)."""
        self._to(self.env.device)
        try:
            return self.batcher.forward_only(self.model, batch, self._log_probs)
        finally:
            if self.offload:
                self._to(torch.device("cpu"))

    def _log_probs(self, mb) -> Tensor:
        return policy_log_probs(
            self.model, mb, temperature=self.cfg.rollout_temperature, chunk_size=self.cfg.log_probs_chunk_size
        )[0]

    @torch.no_grad()
    def copy_from(self, policy: nn.Module) -> None:
        """Overwrite the reference weights with `policy`'s (--ref-update-interval); same sharding."""
        own = {hf_name(n): p for n, p in self.model.named_parameters()}
        for name, param in policy.named_parameters():
            target = own[hf_name(name)]
            source = param.to_local() if isinstance(param, DTensor) else param
            local = target.to_local() if isinstance(target, DTensor) else target
            local.copy_(source)

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.model, None, {}, self.env)

    def load(self, path: str | Path) -> None:
        found = resolve_checkpoint(path, "ref", "actor")
        if found is None:
            raise FileNotFoundError(f"--ref-load {path}: neither a Hugging Face folder nor a temper checkpoint")
        load_checkpoint(found, self.model, None, self.env, restore_rng=False)

    def _to(self, device: torch.device) -> None:
        if self.env.is_cuda:
            self.model.to(device)
