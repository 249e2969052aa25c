"""The actor: the policy being trained, one FSDP rank of it per process.

    actor = Actor(cfg)                       # inside an initialized process group
    resumed = actor.load()                   # --load, or None for a fresh start
    metrics = actor.train(rollout_id, batch) # the whole rollout batch, on every rank
    actor.save(rollout_id, extra=data_source_state)
    for bucket in actor.iter_weight_buckets(): ...   # weight sync to the engines

PPO adds a critic: `values = critic.compute_values(batch)`, `data = actor.prepare(rollout_id, batch,
values)`, `critic.update(data)`, `actor.update(data)`.
"""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from temper.algo import PolicyLossConfig, aggregate, policy_loss_function, sft_loss_function
from temper.train.batcher import Batcher
from temper.train.checkpoint import Resumed, iteration_dir, resolve_checkpoint, write_tracker
from temper.train.env import TrainEnv
from temper.train.hf_export import checkpoint_dtype, export_hf
from temper.train.hf_model import final_hidden_states, load_causal_lm, policy_log_probs
from temper.train.moe_routing import RouterHooks
from temper.train.packing import MicroBatch, to_device
from temper.train.plugins import (
    TrainPlugins,
    custom_advantages,
    custom_loss,
    micro_batch_dict,
    pg_loss_reducer,
    tis_function,
)
from temper.train.reference import ReferenceModel
from temper.train.train_data import TrainData, compute_advantages, pad, pad_flat
from temper.train.trainable import StepTotals, TrainableModel, mean_over_steps, weigh
from temper.train.weights import Bucket, iter_weight_buckets
from temper.types import RolloutBatch

logger = logging.getLogger("temper.train")


class Actor:
    """The policy: log-probs, RL/SFT optimizer steps, checkpoints, HF export and weight export.

    cfg: a validated Config. total_steps: optimizer steps the LR decays over when --lr-decay-iters is
    not given (default: --num-rollout x --num-steps-per-rollout). attn_implementation: the Hugging
    Face attention ("sdpa" by default; "flash_attention_2" where installed).
    """

    def __init__(self, cfg, *, total_steps: int | None = None, attn_implementation: str | None = None):
        _check_supported(cfg)
        self.cfg = cfg
        self.plugins = TrainPlugins.load(cfg)
        self.env = TrainEnv.current()
        torch.manual_seed(cfg.seed)
        model = load_causal_lm(cfg.hf_checkpoint, torch.float32, attn_implementation, router_dtype=cfg.moe_router_dtype)
        self.trainable = TrainableModel.shard(model, cfg, self.env, total_steps=total_steps)
        self.model = self.trainable.model
        self.routing = None  # MoE routing replay and router losses (moe_routing.py)
        z_coeff = cfg.moe_z_loss_coeff or 0.0
        if cfg.use_routing_replay or cfg.use_rollout_routing_replay or cfg.moe_aux_loss_coeff or z_coeff:
            why = ("--use-rollout-routing-replay" if cfg.use_rollout_routing_replay
                   else "--use-routing-replay" if cfg.use_routing_replay else "--moe-aux-loss-coeff/--moe-z-loss-coeff")
            self.routing = RouterHooks(self.model, aux_loss_coeff=cfg.moe_aux_loss_coeff, z_loss_coeff=z_coeff,
                                       load_balancing=cfg.moe_router_load_balancing_type, why=why)  # fmt: skip
        self.progress = self.trainable.progress  # what this rank works on now (work_progress.py), for the live line
        self.batcher = Batcher(cfg, self.env, self.progress)
        self.reference = None
        if _needs_reference(cfg):
            self.reference = ReferenceModel(
                cfg, self.env, attn_implementation=attn_implementation, offload=cfg.offload_train,
                progress=self.progress,
            )  # fmt: skip
        self.loss_config = _policy_loss_config(cfg, self.plugins.tis_mode)
        self.step_metrics: list[dict[str, float]] = []
        """Metrics of each optimizer step of the last `update` (loggers plot these per step)."""

    # -- log-probs -----------------------------------------------------------------------------------

    def compute_log_probs(self, batch: RolloutBatch, *, record_routing: bool = False) -> list[Tensor]:
        """Current-policy log-probs [R_i] of every sample's response tokens (forward only, fp32). With
        `record_routing` (the old-log-prob pass under --use-routing-replay) each micro-batch's MoE routing is
        recorded for training to replay. Under --use-rollout-routing-replay every token routes as the engine
        routed it (the batch's `rollout_routed_experts`)."""
        if self.cfg.use_rollout_routing_replay:
            try:
                return self.batcher.forward_only(self.model, batch, self._engine_routed_log_probs)
            finally:
                self.routing.route_freely()
        if not record_routing or self.routing is None:
            return self.batcher.forward_only(self.model, batch, self._log_probs)
        self.routing.clear()
        try:
            return self.batcher.forward_only(self.model, batch, self._recorded_log_probs)
        finally:
            self.routing.route_freely()

    def _recorded_log_probs(self, mb: MicroBatch) -> Tensor:
        self.routing.record(tuple(mb.positions))
        return self._log_probs(mb)

    def _engine_routed_log_probs(self, mb: MicroBatch) -> Tensor:
        self.routing.use_routing(mb.routed_experts)
        return self._log_probs(mb)

    def _log_probs(self, mb: MicroBatch) -> Tensor:
        return policy_log_probs(
            self.model, mb, temperature=self.cfg.rollout_temperature, chunk_size=self.cfg.log_probs_chunk_size
        )[0]

    # -- training ------------------------------------------------------------------------------------

    def train(self, rollout_id: int, batch: RolloutBatch, values: list[Tensor] | None = None) -> dict[str, float]:
        """Train on one rollout: `update(prepare(...))`. Returns the mean of each metric over its steps."""
        return self.update(self.prepare(rollout_id, batch, values))

    def prepare(self, rollout_id: int, batch: RolloutBatch, values: list[Tensor] | None = None) -> TrainData:
        """Reference and old log-probs, then advantages and returns (temper.algo), for the whole batch.

        Old log-probs are recomputed only when something needs them before training: more than one
        optimizer step per rollout, KL-shaped rewards (--kl-coef), or a custom advantage function or
        loss (slime hands them the recomputed log-probs). Otherwise the first (only) step uses its own
        detached log-probs, so the ratio is exactly 1. --use-rollout-logprobs takes the engine's.
        `values` are the critic's (PPO).
        """
        cfg = self.cfg
        self.trainable.require_onloaded("Actor.prepare")
        data = TrainData(rollout_id, batch, values=values)
        if cfg.use_rollout_routing_replay:
            _check_engine_routing(batch)
        if cfg.loss_type == "sft_loss" or cfg.disable_compute_advantages_and_returns:
            return data
        if self.reference is not None:
            data.ref_log_probs = self.reference.compute_log_probs(batch)
        if cfg.use_rollout_logprobs:
            if batch.rollout_log_probs is None:
                raise ValueError("--use-rollout-logprobs: the rollout batch carries no engine log-probs")
            data.old_log_probs = [t.float() for t in batch.rollout_log_probs]
        elif (cfg.num_steps_per_rollout or 1) > 1 or cfg.kl_coef != 0 or self.plugins.advantage or self.plugins.loss:
            data.old_log_probs = self.compute_log_probs(batch, record_routing=cfg.use_routing_replay)
        elif self.routing is not None:
            self.routing.clear()  # the only step's own forward is the old policy: nothing to replay
        if cfg.advantage_estimator == "ppo" and values is None:
            raise ValueError("--advantage-estimator ppo: pass the critic's values (critic.compute_values(batch))")
        if self.plugins.advantage is not None:
            data.advantages, data.returns = custom_advantages(self.plugins.advantage, cfg, data)
        else:
            data.advantages, data.returns = compute_advantages(
                cfg, batch, old_log_probs=data.old_log_probs, ref_log_probs=data.ref_log_probs, values=values
            )
        return data

    def update(self, data: TrainData) -> dict[str, float]:
        """--num-steps-per-rollout optimizer steps over `data`, each accumulating its micro-batches."""
        batch = data.batch
        self.trainable.require_onloaded("Actor.update")
        self.step_metrics = []
        started = self._resources_start()
        try:
            steps = self.batcher.steps(batch, self.cfg.calculate_per_token_loss)
            for k, (micro_batches, totals) in enumerate(steps, start=1):
                loss = functools.partial(self._loss, data=data, totals=totals)
                metrics = self.trainable.step(micro_batches, loss, stage=f"step {k}/{self.batcher.num_steps}")
                metrics["tokens"] = float(totals.tokens)
                self.step_metrics.append(metrics)
        finally:
            if self.routing is not None:
                self.routing.clear()
        interval = self.cfg.ref_update_interval
        if self.reference is not None and interval and (data.rollout_id + 1) % interval == 0:
            self.reference.copy_from(self.model)
        tokens = sum(step.get("tokens", 0.0) for step in self.step_metrics)
        return mean_over_steps(self.step_metrics) | self._resources(started, tokens)

    def _resources_start(self) -> float:
        if self.env.is_cuda:
            torch.cuda.synchronize(self.env.device)
            torch.cuda.reset_peak_memory_stats(self.env.device)
        return time.perf_counter()

    def _resources(self, started: float, tokens: float) -> dict[str, float]:
        """This rank's memory over the optimizer steps of `update` and, on a GPU whose bf16 peak is known,
        the steps' model FLOPs utilization: 6 x the parameters a token runs through (`active_params`) x tokens
        (attention not counted) over the seconds of the steps and every rank's peak."""
        if not self.env.is_cuda:  # the process's peak resident memory (KiB on Linux)
            return {"host_mem_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        torch.cuda.synchronize(self.env.device)
        seconds = time.perf_counter() - started
        out = {"memory_peak_gib": torch.cuda.max_memory_allocated(self.env.device) / 2**30,
               "memory_reserved_gib": torch.cuda.memory_reserved(self.env.device) / 2**30}  # fmt: skip
        peak = peak_bf16_flops(torch.cuda.get_device_name(self.env.device))
        if peak and seconds > 0:
            out["mfu"] = 6 * active_params(self.model) * tokens / seconds / (peak * self.env.world_size)
        return out

    def _loss(self, mb: MicroBatch, data: TrainData, totals: StepTotals) -> tuple[Tensor, dict[str, Tensor]]:
        """This micro-batch's loss scaled to its share of the step, and its weighted metrics."""
        cfg = self.cfg
        if self.cfg.use_rollout_routing_replay:  # the engine's routing (kept for a recomputing backward)
            self.routing.use_routing(mb.routed_experts)
        elif self.routing is not None:  # the routing recorded for this micro-batch (kept for a recomputing backward)
            self.routing.replay(tuple(mb.positions))
        if self.routing is not None:
            self.routing.sequences(mb.cu_seqlens)  # the sequence-wise balance loss's bounds
        if self.plugins.loss is not None:
            return self._custom_loss(mb, data, totals)
        log_probs, entropy = policy_log_probs(
            self.model, mb, temperature=cfg.rollout_temperature, chunk_size=cfg.log_probs_chunk_size, with_entropy=True
        )
        router_loss, router_metrics = self.routing.losses() if self.routing is not None else (None, {})
        if cfg.entropy_coef == 0:
            entropy = entropy.detach()
        log_probs = pad_flat(log_probs, mb.response_lengths)
        entropy = pad_flat(entropy, mb.response_lengths)
        rows = _Rows(mb, self.env.device, log_probs.shape[1])
        mask = rows(data.batch.loss_masks)
        if cfg.loss_type == "sft_loss":
            loss, metrics = sft_loss_function(log_probs, mask, calculate_per_token_loss=cfg.calculate_per_token_loss)
            metrics["loss"] = loss.detach()
        else:
            old = rows(data.old_log_probs) if data.old_log_probs is not None else log_probs.detach()
            loss, metrics = policy_loss_function(
                log_probs,
                old,
                rows(data.advantages),
                mask,
                self.loss_config,
                ref_log_probs=rows(data.ref_log_probs) if data.ref_log_probs is not None else None,
                rollout_log_probs=rows(data.batch.rollout_log_probs) if data.batch.rollout_log_probs else None,
                entropy=entropy,
                **self._policy_plugins(mb, data, mask),
            )
        if "entropy_loss" in metrics:
            metrics["entropy"] = metrics.pop("entropy_loss")
        else:
            metrics["entropy"] = _masked_entropy(entropy, mask, cfg.calculate_per_token_loss)
        if router_loss is not None:
            loss = loss + router_loss
            metrics |= router_metrics
        return weigh(loss, metrics, totals.shares(data.batch, mb), self.env.world_size)

    def _policy_plugins(self, mb: MicroBatch, data: TrainData, mask: Tensor) -> dict[str, Any]:
        """This micro-batch's custom TIS function and pg-loss reducer (none for a padding micro-batch)."""
        if mb.is_padding:
            return {}
        totals = [len(data.batch.tokens[p]) for p in mb.positions]
        plugins: dict[str, Any] = {}
        if self.plugins.tis is not None:
            plugins["tis_function"] = tis_function(self.plugins.tis, self.cfg, totals, mb.response_lengths)
        if self.plugins.reducer is not None:
            reducer = self.plugins.reducer
            plugins["pg_loss_reducer"] = pg_loss_reducer(reducer, self.cfg, totals, mb.response_lengths, mask)
        return plugins

    def _custom_loss(self, mb: MicroBatch, data: TrainData, totals: StepTotals) -> tuple[Tensor, dict[str, Tensor]]:
        """--loss-type custom_loss on this micro-batch: the user's function gets the packed row's logits."""
        logits = self.model.get_output_embeddings()(final_hidden_states(self.model, mb)).float()[None]
        if mb.is_padding:  # runs the same modules as the other ranks, with no weight
            return logits.sum() * 0.0, {}
        batch = micro_batch_dict(data, mb.positions, self.env.device)
        loss, metrics = custom_loss(self.plugins.loss, self.cfg, batch, logits)
        metrics["loss"] = loss.detach()
        share = totals.shares(data.batch, mb)[0]
        return weigh(loss, metrics, (share, share), self.env.world_size)

    # -- checkpoints and export ----------------------------------------------------------------------

    def save(self, rollout_id: int, extra: dict[str, Any] | None = None) -> Path:
        """Checkpoint into --save (iter_<rollout_id>/actor), then --save-hf when set. Returns the folder."""
        if not self.cfg.save:
            raise ValueError("Actor.save needs --save DIR")
        path = iteration_dir(self.cfg.save, rollout_id)
        state = {"rollout_id": rollout_id, "extra": extra or {}}
        with self.progress.stage("save", "actor checkpoint"):
            self.trainable.save(path / "actor", save_optimizer=not self.cfg.no_save_optim, extra=state)
        if self.reference is not None and self.cfg.ref_update_interval:
            with self.progress.stage("save", "reference checkpoint"):
                self.reference.save(path / "ref")
        write_tracker(self.cfg.save, rollout_id, self.env)
        if self.cfg.save_hf:
            with self.progress.stage("save", "Hugging Face export"):
                self.save_hf(self.cfg.save_hf.format(rollout_id=rollout_id))
        return path

    def load(self, path: str | Path | None = None) -> Resumed | None:
        """Resume from `path` (default --load): weights, optimizer, LR schedule, counters, RNG.

        Returns None when there is nothing to load (no --load, or a --save root with no checkpoint yet).
        """
        path = path or self.cfg.load
        found = resolve_checkpoint(path, "actor") if path else None
        if found is None:
            return None
        state = self.trainable.load(found)
        if self.reference is not None and (found.parent / "ref" / "model").is_dir():
            self.reference.load(found.parent / "ref")
        logger.info("resumed the actor from %s (rollout %d)", found, state["rollout_id"])
        return Resumed(state["rollout_id"], state["extra"], found)

    def save_hf(self, out_dir: str | Path) -> None:
        """Hugging Face folder: safetensors (the --hf-checkpoint's dtype), config, tokenizer."""
        export_hf(self.model, self.cfg.hf_checkpoint, out_dir, self.env)

    def iter_weight_buckets(
        self, bucket_bytes: int | None = None, dtype: torch.dtype | None = None
    ) -> Iterator[Bucket]:
        """(HF name, full tensor) buckets of <= bucket_bytes (default --update-weight-buffer-size).

        Every rank must iterate (the gathers are collectives); dtype defaults to the checkpoint's.
        """
        self.trainable.require_onloaded("Actor.iter_weight_buckets")
        yield from iter_weight_buckets(
            self.model,
            bucket_bytes or self.cfg.update_weight_buffer_size,
            dtype or checkpoint_dtype(self.cfg.hf_checkpoint),
        )

    def weight_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of the full weights `iter_weight_buckets` yields in `dtype` (default: the checkpoint's)."""
        itemsize = (dtype or checkpoint_dtype(self.cfg.hf_checkpoint)).itemsize
        return sum(p.numel() for p in self.model.parameters()) * itemsize  # DTensors: the full shape's count

    # -- memory --------------------------------------------------------------------------------------

    def offload(self) -> None:
        """Parameters, gradients and optimizer state to CPU (colocated engines get the GPU)."""
        self.trainable.offload()

    def onload(self) -> None:
        self.trainable.onload()


MEASURED_METRICS = ("memory_peak_gib", "memory_reserved_gib", "host_mem_peak_gib", "mfu")
"""Metrics of `Actor.update` measured from the machine, not computed by training: two runs of the same steps
agree on every metric but these."""

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "H20": 148e12, "A100": 312e12, "A800": 312e12,
                   "B200": 2250e12, "L40S": 362e12}  # fmt: skip
"""Dense bf16 peak per GPU (NVIDIA's data sheets, SXM parts), by a name fragment of the device."""


def active_params(model: torch.nn.Module) -> int:
    """The parameters one token runs through: all of them (DTensors: the full shape's count), less the routed
    experts of a mixture of experts that the token is not sent to (all but ``num_experts_per_tok`` of
    ``num_experts`` / ``n_routed_experts`` / ``num_local_experts``; shared experts always run)."""
    total = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    num_experts = next((n for n in (getattr(config, k, None) for k in ("num_experts", "n_routed_experts",
                                                                         "num_local_experts")) if n), None)
    top_k = getattr(config, "num_experts_per_tok", None)
    if not (num_experts and top_k):
        return total
    routed = sum(p.numel() for name, p in model.named_parameters() if ".experts." in f".{name}")
    return total - routed * (num_experts - top_k) // num_experts


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named `device_name`, None when the table does not know it."""
    return next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device_name), None)


class _Rows:
    """Per-sample [R_i] lists of the micro-batch's samples as padded [B, width] tensors on `device`.

    A padding micro-batch gets one all-zero row, matching its dummy sequence.
    """

    def __init__(self, mb: MicroBatch, device: torch.device, width: int):
        self.mb, self.device, self.width = mb, device, width

    def __call__(self, tensors: list[Tensor]) -> Tensor:
        if self.mb.is_padding:
            return torch.zeros(1, self.width, device=self.device)
        rows = pad(tensors, self.mb.positions)
        return to_device(torch.nn.functional.pad(rows, (0, self.width - rows.shape[1])), self.device)


def _masked_entropy(entropy: Tensor, mask: Tensor, per_token: bool) -> Tensor:
    """Mean entropy ([B, width], padded) over the trained tokens, aggregated like the loss."""
    return aggregate(entropy.detach(), mask, "token_mean" if per_token else "sample_mean")


def _needs_reference(cfg) -> bool:
    if cfg.loss_type == "sft_loss" or cfg.disable_compute_advantages_and_returns:
        return False
    return cfg.use_kl_loss or cfg.kl_coef != 0


def _policy_loss_config(cfg, tis_mode: str) -> PolicyLossConfig:
    return PolicyLossConfig(
        advantage_estimator=cfg.advantage_estimator,
        eps_clip=cfg.eps_clip,
        eps_clip_high=cfg.eps_clip_high,
        eps_clip_c=cfg.eps_clip_c,
        use_kl_loss=cfg.use_kl_loss,
        kl_loss_coef=cfg.kl_loss_coef,
        kl_loss_type=cfg.kl_loss_type,
        use_unbiased_kl=cfg.use_unbiased_kl,
        entropy_coef=cfg.entropy_coef,
        use_tis=cfg.use_tis,
        tis_mode=tis_mode,
        tis_clip=cfg.tis_clip,
        tis_clip_low=cfg.tis_clip_low,
        calculate_per_token_loss=cfg.calculate_per_token_loss,
        use_rollout_logprobs=cfg.use_rollout_logprobs,
    )


def _check_supported(cfg) -> None:
    if not cfg.hf_checkpoint:
        raise ValueError("the train worker needs --hf-checkpoint (a Hugging Face model folder)")
    if cfg.rollout_top_p != 1.0 or cfg.rollout_top_k > 0:
        logger.warning(
            "--rollout-top-p/--rollout-top-k: training log-probs use the full vocabulary (no top-p/top-k replay)"
        )


def _check_engine_routing(batch: RolloutBatch) -> None:
    """--use-rollout-routing-replay needs the engine's routing on the batch; samples without it (counted,
    logged) route freely."""
    routed = batch.rollout_routed_experts
    if routed is None:
        raise ValueError(
            "--use-rollout-routing-replay: the rollout batch carries no routed experts (Sample.rollout_routed_experts); "
            "the default generate function asks the engine for them, a custom one must set them"
        )
    missing = sum(r is None for r in routed)
    if missing:
        logger.warning("--use-rollout-routing-replay: %d of %d samples carry no routed experts; they route freely",
                       missing, len(routed))
