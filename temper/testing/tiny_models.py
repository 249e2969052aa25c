"""Tiny random Hugging Face checkpoints for tests, benchmarks and the quickstart.

`build_tiny_model` writes a normal HF folder (config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json with a ChatML ``chat_template``, special_tokens_map.json) that
loads through ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` with no
network. Weights are random (``from_config``) and seeded: the same arguments give byte-identical files.

Shapes are `ModelShape` values, named in `PRESETS`: "tiny" (the default, ~0.5M parameters, builds in
well under a second), "qwen3-0.6b" and "qwen3-4b" (Qwen3-0.6B's and Qwen3-4B's exact shapes with
random weights, for GPU benchmarks), "qwen3-30b-a3b" (arch qwen3_moe), "glm4-9b" (arch glm4),
"moonlight-16b-a3b" and "deepseek-v3" (arch deepseek_v3), "glm4.5-air" and "glm4.5" (arch glm4_moe): the shapes of
Qwen3-30B-A3B, GLM-4-9B-0414, Moonlight-16B-A3B, DeepSeek-V3, GLM-4.5-Air and GLM-4.5. Any field can be
overridden by keyword.

Architectures (`ARCHITECTURES`): the dense qwen3, qwen2 and llama; qwen3_moe (Qwen3-MoE: top-k routed
experts in place of the MLP, shaped by the ``num_experts``/``moe_*`` fields); glm4 (GLM-4: partial
interleaved RoPE, q/k/v biases, fused gate-up, the extra post-attention and post-MLP norms); deepseek_v3
(DeepSeek-V3: multi-head latent attention shaped by the ``*_lora_rank``/``*_head_dim`` fields, the first
``first_k_dense_replace`` layers dense, the others sigmoid-routed experts with shared experts and grouped
top-k; ``num_key_value_heads`` is always ``num_heads``, as MLA has no grouped K/V); glm4_moe (GLM-4.5: GLM's
partial RoPE in the half-split layout, q/k/v biases, q/k norms with ``use_qk_norm``, the first
``first_k_dense_replace`` layers dense and the others DeepSeek-V3's sigmoid-routed experts with shared experts and
grouped top-k; no multi-token-prediction layer).

Command line: ``python -m temper.testing.tiny_models OUT_DIR [--arch qwen3] [--preset tiny] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PretrainedConfig

from temper.testing.tokenizer import EOS_TOKEN, PAD_TOKEN, TOKENIZER_SIZE, save_tokenizer, special_token_ids

# arch name -> (HF model_type, architecture class written to config.json)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "glm4": ("glm4", "Glm4ForCausalLM"),
    "deepseek_v3": ("deepseek_v3", "DeepseekV3ForCausalLM"),
    "glm4_moe": ("glm4_moe", "Glm4MoeForCausalLM"),
}
# Archs whose attention projects to head_dim explicitly (num_heads * head_dim may differ from hidden_size).
EXPLICIT_HEAD_DIM = ("qwen3", "qwen3_moe", "glm4", "deepseek_v3", "glm4_moe")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The size of a decoder-only transformer, in HF config terms.

    vocab_size may exceed the tokenizer's `TOKENIZER_SIZE` (as Qwen's 151936 exceeds its 151669); the
    extra embedding rows are never produced by the tokenizer. ``num_heads * head_dim`` may differ from
    hidden_size only for the archs in `EXPLICIT_HEAD_DIM`, whose attention projects to head_dim explicitly.

    The MoE fields shape qwen3_moe (HF's names; layer i has experts unless it is in
    ``mlp_only_layers``, and only when ``(i + 1) % decoder_sparse_step == 0``) and deepseek_v3
    and glm4_moe (``num_experts`` is their ``n_routed_experts``; layers from ``first_k_dense_replace`` on have
    experts); ``partial_rotary_factor`` (the share of head_dim that RoPE rotates) applies to glm4 and glm4_moe
    only. The MLA fields after it shape deepseek_v3 only (``q_lora_rank`` None: q is one projection, as in
    Moonlight; its head_dim and num_kv_heads are unused), the routing fields (``n_shared_experts`` to
    ``routed_scaling_factor``) deepseek_v3 and glm4_moe, ``use_qk_norm`` glm4_moe only. Dense archs ignore them
    all.
    """

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 4096
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    partial_rotary_factor: float = 0.5
    q_lora_rank: int | None = 64
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    n_shared_experts: int = 1
    n_group: int = 4
    topk_group: int = 2
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 2.5
    rope_interleave: bool = True
    use_qk_norm: bool = True

    def __post_init__(self) -> None:
        if self.vocab_size < TOKENIZER_SIZE:
            raise ValueError(
                f"ModelShape.vocab_size={self.vocab_size} is smaller than the test tokenizer "
                f"({TOKENIZER_SIZE} ids); use vocab_size >= {TOKENIZER_SIZE}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelShape.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim < 32 or self.head_dim % 2:
            raise ValueError(
                f"ModelShape.head_dim={self.head_dim}: use an even head_dim >= 32 (fused attention and "
                "rotary kernels reject smaller heads)"
            )
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"ModelShape.num_experts_per_tok={self.num_experts_per_tok} must be in "
                f"1..num_experts={self.num_experts}"
            )
        rotary_dim = self.head_dim * self.partial_rotary_factor
        if rotary_dim != int(rotary_dim) or int(rotary_dim) % 2 or not 0 < rotary_dim <= self.head_dim:
            raise ValueError(
                f"ModelShape.partial_rotary_factor={self.partial_rotary_factor} of head_dim={self.head_dim} must "
                "give an even number of rotary dimensions"
            )


PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(),
    "qwen3-0.6b": ModelShape(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": ModelShape(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    ),
    "qwen3-4b": ModelShape(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": ModelShape(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
    ),
    "qwen3-30b-a3b": ModelShape(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=48,
        num_heads=32,
        num_kv_heads=4,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=768,
        norm_topk_prob=True,
    ),
    "glm4-9b": ModelShape(
        vocab_size=151552,
        hidden_size=4096,
        intermediate_size=13696,
        num_layers=40,
        num_heads=32,
        num_kv_heads=2,
        head_dim=128,
        max_position_embeddings=32768,
        rope_theta=10_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        partial_rotary_factor=0.5,
    ),
    # moonshotai/Moonlight-16B-A3B (DeepseekV3ForCausalLM): no q LoRA, one expert group.
    "moonlight-16b-a3b": ModelShape(
        vocab_size=163840,
        hidden_size=2048,
        intermediate_size=11264,
        num_layers=27,
        num_heads=16,
        num_kv_heads=16,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=50_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        num_experts=64,
        num_experts_per_tok=6,
        moe_intermediate_size=1408,
        norm_topk_prob=True,
        q_lora_rank=None,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_shared_experts=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        routed_scaling_factor=2.446,
    ),
    # deepseek-ai/DeepSeek-V3 without its YaRN rope scaling (factor 40 from 4096 positions), which the
    # factory does not write; its multi-token-prediction layer is not part of the model either.
    "deepseek-v3": ModelShape(
        vocab_size=129280,
        hidden_size=7168,
        intermediate_size=18432,
        num_layers=61,
        num_heads=128,
        num_kv_heads=128,
        head_dim=64,
        max_position_embeddings=163840,
        rope_theta=10_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        num_experts=256,
        num_experts_per_tok=8,
        moe_intermediate_size=2048,
        norm_topk_prob=True,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_shared_experts=1,
        n_group=8,
        topk_group=4,
        first_k_dense_replace=3,
        routed_scaling_factor=2.5,
    ),
    # zai-org/GLM-4.5-Air (Glm4MoeForCausalLM, 106B-A12B): one dense layer, one expert group, no q/k norm; its
    # multi-token-prediction layer (num_nextn_predict_layers 1) is not part of the model.
    "glm4.5-air": ModelShape(
        vocab_size=151552,
        hidden_size=4096,
        intermediate_size=10944,
        num_layers=46,
        num_heads=96,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=1408,
        norm_topk_prob=True,
        partial_rotary_factor=0.5,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        routed_scaling_factor=1.0,
        use_qk_norm=False,
    ),
    # zai-org/GLM-4.5 (355B-A32B): three dense layers, q/k norms, routed weights scaled by 2.5.
    "glm4.5": ModelShape(
        vocab_size=151552,
        hidden_size=5120,
        intermediate_size=12288,
        num_layers=92,
        num_heads=96,
        num_kv_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        num_experts=160,
        num_experts_per_tok=8,
        moe_intermediate_size=1536,
        norm_topk_prob=True,
        partial_rotary_factor=0.5,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=3,
        routed_scaling_factor=2.5,
        use_qk_norm=True,
    ),
}


def resolve_shape(preset: str | ModelShape = "tiny", **overrides) -> ModelShape:
    """`preset` (a name in `PRESETS` or a `ModelShape`) with `overrides` (ModelShape field names) applied."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown tiny-model preset {preset!r}; expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    fields = {f.name for f in dataclasses.fields(ModelShape)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown ModelShape field(s) {unknown}; expected some of {sorted(fields)}")
    return dataclasses.replace(preset, **overrides)


def make_config(arch: str = "qwen3", shape: ModelShape | None = None) -> PretrainedConfig:
    """The HF config for `arch` (a name in `ARCHITECTURES`) at `shape`, with Qwen's bos/eos ids.

    Builds no weights, so it is cheap even for large presets.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny-model arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    shape = shape or PRESETS["tiny"]
    model_type, architecture = ARCHITECTURES[arch]
    if arch not in EXPLICIT_HEAD_DIM and shape.num_heads * shape.head_dim != shape.hidden_size:
        # Qwen2 on transformers 4.x derives head_dim from hidden_size and ignores the field.
        raise ValueError(
            f"arch {arch!r} needs num_heads * head_dim == hidden_size, got {shape.num_heads} * "
            f"{shape.head_dim} != {shape.hidden_size}"
        )
    ids = special_token_ids()
    return AutoConfig.for_model(
        model_type,
        architectures=[architecture],
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads if arch == "deepseek_v3" else shape.num_kv_heads,
        head_dim=shape.qk_rope_head_dim if arch == "deepseek_v3" else shape.head_dim,  # HF's RoPE width
        max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta,
        rms_norm_eps=shape.rms_norm_eps,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        # No pad_token_id, as in Qwen's config.json: with one, the embedding row would get padding_idx
        # (zeroed at init and never trained). The pad id lives in generation_config and the tokenizer.
        # (GLM4's config class defaults it to its own 151329, so it is cleared explicitly.)
        **_arch_fields(arch, shape),
    )


def _arch_fields(arch: str, shape: ModelShape) -> dict:
    """The HF config fields that only `arch` has."""
    if arch == "qwen3_moe":
        return dict(
            num_experts=shape.num_experts,
            num_experts_per_tok=shape.num_experts_per_tok,
            moe_intermediate_size=shape.moe_intermediate_size,
            norm_topk_prob=shape.norm_topk_prob,
            decoder_sparse_step=shape.decoder_sparse_step,
            mlp_only_layers=list(shape.mlp_only_layers),
        )
    if arch == "glm4":
        return dict(partial_rotary_factor=shape.partial_rotary_factor, attention_bias=True, pad_token_id=None)
    if arch == "deepseek_v3":
        _check_grouped_routing(shape)
        return dict(
            n_routed_experts=shape.num_experts,
            num_experts_per_tok=shape.num_experts_per_tok,
            moe_intermediate_size=shape.moe_intermediate_size,
            norm_topk_prob=shape.norm_topk_prob,
            n_shared_experts=shape.n_shared_experts,
            n_group=shape.n_group,
            topk_group=shape.topk_group,
            first_k_dense_replace=shape.first_k_dense_replace,
            routed_scaling_factor=shape.routed_scaling_factor,
            q_lora_rank=shape.q_lora_rank,
            kv_lora_rank=shape.kv_lora_rank,
            qk_nope_head_dim=shape.qk_nope_head_dim,
            qk_rope_head_dim=shape.qk_rope_head_dim,
            v_head_dim=shape.v_head_dim,
            rope_interleave=shape.rope_interleave,
            num_nextn_predict_layers=0,  # no multi-token-prediction layer: the model has none to save
            pad_token_id=None,
        )
    if arch == "glm4_moe":
        _check_grouped_routing(shape)
        return dict(
            n_routed_experts=shape.num_experts,
            num_experts_per_tok=shape.num_experts_per_tok,
            moe_intermediate_size=shape.moe_intermediate_size,
            norm_topk_prob=shape.norm_topk_prob,
            n_shared_experts=shape.n_shared_experts,
            n_group=shape.n_group,
            topk_group=shape.topk_group,
            first_k_dense_replace=shape.first_k_dense_replace,
            routed_scaling_factor=shape.routed_scaling_factor,
            partial_rotary_factor=shape.partial_rotary_factor,
            use_qk_norm=shape.use_qk_norm,
            attention_bias=True,  # q/k/v only, as in the released configs
            num_nextn_predict_layers=0,  # no multi-token-prediction layer: the model has none to save
            pad_token_id=None,
        )
    return {}


def _check_grouped_routing(shape: ModelShape) -> None:
    """DeepSeek-V3's (and GLM-4.5's) routing ranks groups of >= 2 experts and picks its experts from the kept groups."""
    per_group = shape.num_experts // shape.n_group
    if shape.num_experts % shape.n_group or per_group < 2 or not 0 < shape.topk_group <= shape.n_group:
        raise ValueError(
            f"ModelShape.n_group={shape.n_group} must divide num_experts={shape.num_experts} into groups of at "
            f"least 2, and topk_group={shape.topk_group} be in 1..n_group"
        )
    if shape.num_experts_per_tok > shape.topk_group * per_group:
        raise ValueError(
            f"ModelShape.num_experts_per_tok={shape.num_experts_per_tok} exceeds the {shape.topk_group * per_group} "
            f"experts of topk_group={shape.topk_group} groups"
        )


def make_generation_config() -> GenerationConfig:
    """Stop on ``<|im_end|>`` or ``<|endoftext|>``, pad with ``<|endoftext|>``; no sampling defaults.

    Qwen ships temperature/top_p defaults here; tiny models leave them out so that a bare
    ``generate()`` is greedy and tests are deterministic.
    """
    ids = special_token_ids()
    return GenerationConfig(
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=[ids[EOS_TOKEN], ids[PAD_TOKEN]],
        pad_token_id=ids[PAD_TOKEN],
    )


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "qwen3",
    *,
    preset: str | ModelShape = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weights: bool = True,
    **overrides,
) -> Path:
    """Write a randomly initialised `arch` checkpoint of shape `preset` (+ `overrides`) to `out_dir`.

    Weights are drawn in float32 under `seed` (the global torch RNG is left untouched), then cast to
    `dtype`, so the same arguments give byte-identical files and a bf16 build is the cast of the fp32
    one. `weights=False` writes everything but the weights (config.json, generation_config.json, the
    tokenizer), in no time at any size: a folder for an engine with ``load_format="dummy"``. `out_dir`
    is created if needed; existing files of the same names are overwritten. Returns `out_dir` as a Path.
    """
    out_dir = Path(out_dir)
    shape = resolve_shape(preset, **overrides)
    config = make_config(arch, shape)
    if weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        model.to(dtype)
        model.generation_config = make_generation_config()
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        config.save_pretrained(out_dir)
        make_generation_config().save_pretrained(out_dir)
    _add_legacy_rope_fields(out_dir / "config.json", shape, arch)
    save_tokenizer(out_dir, model_max_length=shape.max_position_embeddings)
    return out_dir


def _add_legacy_rope_fields(config_path: Path, shape: ModelShape, arch: str) -> None:
    """transformers 5 writes only ``rope_parameters``; 4.x and hub-style readers look for ``rope_theta``
    (and, for GLM4 and GLM-4.5, ``partial_rotary_factor``) at the top level, where the published configs have them."""
    config = json.loads(config_path.read_text())
    legacy = {"rope_theta": shape.rope_theta}
    if arch in ("glm4", "glm4_moe"):
        legacy["partial_rotary_factor"] = shape.partial_rotary_factor
    missing = {key: value for key, value in legacy.items() if key not in config}
    if missing:
        config.update(missing)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@functools.cache
def _cached_build(arch: str, seed: int, dtype: torch.dtype, overrides: tuple[tuple[str, object], ...]) -> Path:
    out_dir = Path(tempfile.mkdtemp(prefix=f"temper-tiny-{arch}-"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    return build_tiny_model(out_dir, arch, seed=seed, dtype=dtype, **dict(overrides))


def tiny_model_dir(arch: str = "qwen3", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """A tiny checkpoint folder, built once per process per distinct arguments and removed at exit.

    Arguments are those of `build_tiny_model` (the preset is always "tiny"). Callers must treat the
    folder as read-only: it is shared by every caller with the same arguments.
    """
    return _cached_build(arch, seed, dtype, tuple(sorted(overrides.items())))


def main(argv: list[str] | None = None) -> Path:
    """``python -m temper.testing.tiny_models OUT_DIR``: build a checkpoint and print its path."""
    parser = argparse.ArgumentParser(description="Write a tiny random Hugging Face checkpoint.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", default="qwen3", choices=sorted(ARCHITECTURES))
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    path = build_tiny_model(
        args.out_dir, args.arch, preset=args.preset, seed=args.seed, dtype=getattr(torch, args.dtype)
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
