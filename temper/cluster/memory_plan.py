"""The memory plan of a colocated run: what the trainer and the engines keep on a shared GPU, decided at start.

On a shared GPU the engine holds `--sglang-mem-fraction-static` of the memory (weights, activations
and KV cache), and the trainer its FSDP shard of the model and optimizer state, plus gradients,
compute copies and activations while it trains. The plan estimates both per GPU (`trainer_bytes`,
`engine_bytes`) and takes the first of three outcomes under which both phases fit: generating (the
whole engine + what the trainer keeps) and training (the trainer at its peak + what the engine keeps).

- "resident": both fit at once; nothing is released or offloaded.
- "release_kv_cache": the engine frees its KV cache during training (its weights stay); the trainer
  stays on the GPU.
- "offload": the engine frees weights and KV cache during training and the trainer's state goes to
  CPU outside training (slime's --offload). Also the answer when nothing fits (logged as such).

--offload, --offload-train, --offload-rollout and their --no- forms, when given, fix their side in
slime's meaning (--offload-rollout frees weights and KV cache); the plan then picks the other side.
Runs it does not estimate (CPU, disaggregated, no trainer or no engine of temper's, GPU memory
unknown) follow the flags, with slime's default for --colocate: both on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temper.cluster.placement import ResourcePlan

GiB = 2**30
ALL_TAGS = ("weights", "kv_cache")
"""The engine's memory tags (`/release_memory_occupation`)."""

TRAINER_RESERVE_BYTES = 2 * GiB
"""Kept by each train process (actor, PPO critic) whatever it holds: CUDA context, NCCL buffers,
allocator fragmentation."""

ENGINE_RESERVE_BYTES = 1 * GiB
"""Kept by an engine with everything released: CUDA context, CUDA-graph pool, workspace."""

ENGINE_MEM_FRACTION = 0.85
"""`EngineArgs.mem_fraction_static`'s default: the engine's share when --sglang-mem-fraction-static is not given."""

DEFAULT_CONTEXT_TOKENS = 4096
"""The engine's context-length cap when neither --rollout-max-context-len nor --sglang-context-length is given."""

ACTIVATION_WIDTHS = (12, 4, 6)
"""bf16 values a decoder layer keeps for backward per token, per unit of (hidden, MLP, attention) width:
norm inputs in fp32, projection inputs, residual; gate, up, activation, down input; q, k, v, rotated q
and k, attention output."""

OUTCOMES = {
    "resident": (False, ()),
    "release_kv_cache": (False, ("kv_cache",)),
    "offload": (True, ALL_TAGS),
}
"""The plan's outcomes, in order of preference: (trainer offloaded outside training, engine tags
released during training)."""


@dataclass(frozen=True)
class ModelSize:
    """What the estimate needs of a decoder-only model.

    params: all parameters (tied embeddings counted once). layers, hidden, intermediate (MLP inner
    width), attention (query heads x head dim), vocab: from config.json. tied: the LM head is the
    embedding.
    """

    params: int
    layers: int
    hidden: int
    intermediate: int
    attention: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, hf_config: dict, params: int) -> ModelSize:
        """From a Hugging Face config.json's values (its text_config for multimodal models)."""
        cfg = hf_config.get("text_config", hf_config)
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if cfg.get("kv_lora_rank"):  # multi-head latent attention: a query head is nope + rope wide
            head_dim = (cfg.get("qk_nope_head_dim") or 0) + (cfg.get("qk_rope_head_dim") or 0) or head_dim
        return cls(
            params=params,
            layers=cfg["num_hidden_layers"],
            hidden=cfg["hidden_size"],
            intermediate=cfg.get("intermediate_size") or 4 * cfg["hidden_size"],
            attention=heads * head_dim,
            vocab=cfg["vocab_size"],
            tied=cfg.get("tie_word_embeddings", True),
        )

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def layer_params(self) -> int:
        return max(self.params - self.embedding_params, 0) // max(self.layers, 1)


KEEP_GATHERED_MAX_PARAMS = 2_000_000_000


def keeps_gathered(world_size: int, params: int) -> bool:
    """Whether a model of `params` parameters trains with its decoder layers kept gathered through a step
    (one rank, a model small enough that 2 bytes a parameter of bf16 copies are cheap: parallelize.py)."""
    return world_size == 1 and params <= KEEP_GATHERED_MAX_PARAMS


def trainer_bytes(
    model: ModelSize,
    *,
    ranks: int,
    tokens: int,
    recompute: bool,
    chunk_tokens: int,
    critic: bool = False,
    reference: bool = False,
    sync_buffer: int = 0,
) -> tuple[int, int]:
    """(resident, peak) bytes of one train rank's state on its GPU.

    resident (outside training): fp32 master parameters and AdamW's two fp32 moments, 12 bytes per
    parameter over the `ranks` FSDP shards (twice with a PPO `critic` of the same size), and a bf16
    `reference` model's 2 bytes per parameter over the ranks, and the ipc weight sync's persistent
    `sync_buffer`.
    peak (training) adds: fp32 gradients (4 bytes per parameter over the ranks); FSDP's bf16 compute
    copies, i.e. the all-gathered root (embeddings and LM head, unsharded through forward and
    backward) and two decoder layers (the running one and the prefetched one), with one layer's
    unsharded fp32 gradient before its reduce-scatter; the activations of one micro-batch of
    `tokens` (ACTIVATION_WIDTHS per layer, or with `recompute` each layer's bf16 input plus one layer
    in full); and one log-prob chunk of `chunk_tokens` rows over the vocabulary (bf16 logits, turned
    into their gradient in place by the CUDA kernels: 2 bytes per entry). Not counted: the CUDA context
    (TRAINER_RESERVE_BYTES). A model that one rank trains with its layers kept gathered
    (`keeps_gathered`) holds every layer's bf16 copy through a step instead of two.
    """

    copies = 1 + (1 if critic else 0)
    resident = (12 * copies + (2 if reference else 0)) * model.params // ranks + sync_buffer
    gradients = 4 * model.params // ranks
    gathered_layers = model.layers if keeps_gathered(ranks, model.params) else 2
    compute = 2 * (model.embedding_params + gathered_layers * model.layer_params) + 4 * model.layer_params
    hidden, mlp, attention = ACTIVATION_WIDTHS
    layer = 2 * tokens * (hidden * model.hidden + mlp * model.intermediate + attention * model.attention)
    saved = model.layers * 2 * tokens * model.hidden + layer if recompute else model.layers * layer
    logits = 2 * chunk_tokens * model.vocab
    return resident, resident + gradients + compute + saved + logits


def engine_bytes(model: ModelSize, *, total: int, fraction: float, dtype_bytes: int, tp: int) -> tuple[int, int]:
    """(weights, whole) bytes of one engine GPU: the weights in the engine's dtype over its `tp`
    tensor-parallel ranks, and all it holds while generating, `fraction` x `total` (the built-in
    engine sizes its KV cache so that weights, activations and KV cache fill that share of the GPU:
    `ModelRunner._auto_num_kv_blocks`)."""
    return model.params * dtype_bytes // tp, int(fraction * total)


@dataclass(frozen=True)
class MemorySizes:
    """Bytes on one shared GPU: its `total`, the trainer's (`trainer_bytes`), the engine's
    (`engine_bytes`), and `reserve`, what the train processes keep whatever they hold."""

    total: int
    trainer_resident: int
    trainer_peak: int
    engine_weights: int
    engine_whole: int
    reserve: int = TRAINER_RESERVE_BYTES

    def engine_kept(self, release: tuple[str, ...]) -> int:
        """What the engine holds during training with `release` freed."""
        if not release:
            return self.engine_whole
        return ENGINE_RESERVE_BYTES + (0 if "weights" in release else self.engine_weights)

    def generating(self, offload_train: bool) -> int:
        """Bytes while the engine generates: all of it, and the trainer unless offloaded."""
        return self.engine_whole + self.reserve + (0 if offload_train else self.trainer_resident)

    def training(self, release: tuple[str, ...]) -> int:
        """Bytes while the trainer trains: its peak, and what the engine keeps with `release` freed."""
        return self.engine_kept(release) + self.reserve + self.trainer_peak

    def need(self, offload_train: bool, release: tuple[str, ...]) -> int:
        return max(self.generating(offload_train), self.training(release))

    def fits(self, offload_train: bool, release: tuple[str, ...]) -> bool:
        return self.need(offload_train, release) <= self.total


@dataclass(frozen=True)
class MemoryPlan:
    """How trainer and engines share memory for the whole run.

    offload_train: the trainer's state goes to CPU outside training (--offload-train). release: the
    engine tags freed during training and resumed around the weight sync: (), ("kv_cache",) or
    ("weights", "kv_cache") (--offload-rollout). outcome: one of OUTCOMES, or "flags" when
    --offload* flags fixed a side. sizes: the estimate, None when the run is not estimated (`why`).
    ipc_buffer_bytes: the ipc transport's buffer on each train rank's GPU (0: not planned, the flag's bucket
    size); the whole model in the engines' dtype when that fits with the same offloads as one bucket does, so
    a sync is one handoff (`plan_memory`).
    """

    offload_train: bool
    release: tuple[str, ...]
    outcome: str
    sizes: MemorySizes | None = None
    why: str = ""
    ipc_buffer_bytes: int = 0

    @property
    def fits(self) -> bool:
        return self.sizes is None or self.sizes.fits(self.offload_train, self.release)

    def describe(self) -> str:
        """One line: the decision, and with an estimate its numbers (GiB per GPU)."""
        what = (
            f"trainer {'offloaded to CPU' if self.offload_train else 'kept in place'} outside training, "
            f"engine releases {' + '.join(self.release) or 'nothing'} during training"
        )
        if self.sizes is None:
            return f"memory plan ({self.why}): {what}"
        s = self.sizes
        need = s.need(self.offload_train, self.release)
        numbers = (
            f"trainer {s.trainer_resident / GiB:.1f} GiB outside training, {s.trainer_peak / GiB:.1f} training "
            f"(+{s.reserve / GiB:.0f} reserve); engine {s.engine_whole / GiB:.1f} "
            f"(weights {s.engine_weights / GiB:.1f} + KV cache and the rest "
            f"{(s.engine_whole - s.engine_weights) / GiB:.1f}); together at most {need / GiB:.1f} of "
            f"{s.total / GiB:.1f} GiB"
        )
        if self.ipc_buffer_bytes:
            numbers += f"; weight-sync buffer {self.ipc_buffer_bytes / GiB:.2f} GiB"
        return f"memory plan per GPU: {numbers}; {self.outcome}: {what}; {self._verdict()}"

    def _verdict(self) -> str:
        s = self.sizes
        if s.training(self.release) > s.total:
            return (
                "does NOT fit while training: expect out-of-memory (use more GPUs, --recompute-activations or "
                "fewer tokens per micro-batch)"
            )
        if s.generating(self.offload_train) > s.total:
            return "does NOT fit while generating: expect out-of-memory (lower --sglang-mem-fraction-static)"
        return "fits"


def decide(sizes: MemorySizes, offload_train: bool | None = None, offload_rollout: bool | None = None) -> MemoryPlan:
    """The plan for `sizes`: the first of OUTCOMES that fits (the last when none does). A flag that is
    not None fixes its side (offload_rollout: all tags or none); the other side is then the least
    movement that fits."""
    if offload_train is None and offload_rollout is None:
        for outcome, (train, release) in OUTCOMES.items():
            if sizes.fits(train, release):
                return MemoryPlan(train, release, outcome, sizes)
        return MemoryPlan(True, ALL_TAGS, "offload", sizes)
    trains = (False, True) if offload_train is None else (offload_train,)
    releases = ((), ("kv_cache",), ALL_TAGS) if offload_rollout is None else (ALL_TAGS if offload_rollout else (),)
    choices = [(train, release) for train in trains for release in releases]
    train, release = next((c for c in choices if sizes.fits(*c)), choices[-1])
    return MemoryPlan(train, release, "flags", sizes)


def plan_memory(cfg, plan: ResourcePlan, total: int | None) -> MemoryPlan:
    """The run's plan for validated `cfg`, the resource `plan` and each GPU's `total`
    memory (None: unknown). Estimated for colocated CUDA runs with a trainer and temper's engines."""
    why = _not_estimated(plan, total)
    if why:
        return _from_flags(cfg, plan, why)
    params = checkpoint_params(cfg.hf_checkpoint)
    if params is None:
        return _from_flags(cfg, plan, f"no *.safetensors in {cfg.hf_checkpoint} to count parameters")
    return with_ipc_buffer(cfg, plan, total, params)


def with_ipc_buffer(cfg, plan: ResourcePlan, total: int, params: int) -> MemoryPlan:
    """`decide` on the estimate, and the ipc transport's buffer: the whole model in the engines' dtype (a sync is
    then one handoff; each bucket costs a request and the engine's wait, ~2 ms on an H100) when that fits with
    the trainer kept on the GPU and no more released by the engine than with one bucket's buffer, else one
    bucket (`_ipc_buffer_bytes`). (The buffer stays on the GPU when the trainer's state is offloaded.)"""
    bucketed = decide(estimate(cfg, plan, total, params), cfg.offload_train, cfg.offload_rollout)
    if (cfg.update_weight_transport or "ipc") != "ipc":
        return bucketed
    dtype_bytes = _DTYPE_BYTES.get(_engine_dtype(cfg), 2)
    whole = params * dtype_bytes
    one = decide(estimate(cfg, plan, total, params, sync_buffer=whole), cfg.offload_train, cfg.offload_rollout)
    if one.fits and not one.offload_train and (one.offload_train, one.release) == (bucketed.offload_train,
                                                                                    bucketed.release):
        return dataclasses.replace(one, ipc_buffer_bytes=whole)
    model = ModelSize.of(_hf_config(cfg), params)
    return dataclasses.replace(bucketed, ipc_buffer_bytes=_ipc_buffer_bytes(cfg, model, dtype_bytes))


def _not_estimated(plan: ResourcePlan, total: int | None) -> str:
    """Why the run gets no estimate ("" when it does)."""
    reasons = [
        (plan.device != "cuda", "CPU run"),
        (not plan.colocate, "not colocated"),
        (not plan.train_ranks, "no trainer"),
        (not plan.num_engines, "no engines started by temper"),
        (not total, "GPU memory unknown"),
    ]
    return next((why for bad, why in reasons if bad), "")


def _from_flags(cfg, plan: ResourcePlan, why: str) -> MemoryPlan:
    """slime's rule: each flag as given, both on with --colocate; nothing to hand over without a trainer."""
    train = plan.colocate if cfg.offload_train is None else cfg.offload_train
    rollout = plan.colocate if cfg.offload_rollout is None else cfg.offload_rollout
    if not plan.train_ranks:
        train = rollout = False
    return MemoryPlan(bool(train), ALL_TAGS if rollout else (), "flags", why=why)


def estimate(cfg, plan: ResourcePlan, total: int, params: int, sync_buffer: int | None = None) -> MemorySizes:
    """`MemorySizes` of one GPU of a colocated run from `cfg`, the checkpoint's config.json and `params`;
    `sync_buffer`: the ipc buffer's bytes (default: one bucket, `_ipc_buffer_bytes`)."""
    from temper.train.log_probs import resolve_chunk_size

    hf_config = _hf_config(cfg)
    model = ModelSize.of(hf_config, params)
    dtype_bytes = _DTYPE_BYTES.get(_engine_dtype(cfg), 2)
    resident, peak = trainer_bytes(
        model,
        ranks=plan.train_ranks,
        tokens=tokens_per_micro_batch(cfg, hf_config),
        recompute=cfg.recompute_activations,
        chunk_tokens=resolve_chunk_size(cfg.log_probs_chunk_size, model.vocab),
        critic=plan.critic,
        reference=cfg.use_kl_loss or cfg.kl_coef != 0,
        sync_buffer=_ipc_buffer_bytes(cfg, model, dtype_bytes) if sync_buffer is None else sync_buffer,
    )
    weights, whole = engine_bytes(
        model,
        total=total,
        fraction=cfg.engine.sglang.get("mem_fraction_static") or ENGINE_MEM_FRACTION,
        dtype_bytes=dtype_bytes,
        tp=plan.gpus_per_engine,
    )
    return MemorySizes(total, resident, peak, weights, whole, TRAINER_RESERVE_BYTES * (2 if plan.critic else 1))


_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def _engine_dtype(cfg) -> str:
    from temper.cluster.engine_group import engine_dtype

    return engine_dtype(cfg, "cuda")


def _hf_config(cfg) -> dict:
    return json.loads((Path(cfg.hf_checkpoint) / "config.json").read_text())


def _ipc_buffer_bytes(cfg, model: ModelSize, dtype_bytes: int) -> int:
    """The ipc transport's buffer (the colocated default on CUDA), kept on the GPU for the whole run:
    one bucket, or the largest tensor (the embedding) in the engine's dtype when that is bigger."""
    if (cfg.update_weight_transport or "ipc") != "ipc":
        return 0
    return max(cfg.update_weight_buffer_size, model.vocab * model.hidden * dtype_bytes)


def tokens_per_micro_batch(cfg, hf_config: dict) -> int:
    """Tokens of the largest micro-batch: --max-tokens-per-gpu with --use-dynamic-batch-size, else
    --micro-batch-size samples of the longest sample the engine can produce."""
    if cfg.use_dynamic_batch_size:
        return cfg.max_tokens_per_gpu
    text = hf_config.get("text_config", hf_config)
    limit = (
        cfg.rollout_max_context_len
        or cfg.engine.sglang.get("context_length")
        or min(text.get("max_position_embeddings") or DEFAULT_CONTEXT_TOKENS, DEFAULT_CONTEXT_TOKENS)
    )
    if cfg.rollout_max_prompt_len and cfg.rollout_max_response_len:
        limit = min(limit, cfg.rollout_max_prompt_len + cfg.rollout_max_response_len)
    return cfg.micro_batch_size * limit


def checkpoint_params(folder: str | Path) -> int | None:
    """Parameters stored in a Hugging Face folder's *.safetensors files, read from their headers (no
    weights are loaded); None when it has none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total
