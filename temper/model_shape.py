"""Check Megatron model-shape flags (slime's scripts/models/*.sh) against a Hugging Face config.json.

slime users `source scripts/models/MODEL.sh` and pass `${MODEL_ARGS[@]}`; temper builds the model from
`--hf-checkpoint`, so a shape flag that disagrees with the checkpoint means the user pointed at the
wrong model or the wrong script. Only flags that were given are checked; a flag that states an
architecture by its presence (`--swiglu`, `--qk-layernorm`, ...) counts as given, present or absent, when
a shape script was (`--num-layers` set), as Megatron reads its absence as the opposite choice. What
config.json leaves implicit comes from its `model_type` (Qwen2's q/k/v biases, Qwen3's q/k norms, GLM4's
interleaved RoPE and post-norms, DeepSeek-V3's latent attention); a model type not listed below leaves those
flags unchecked. The MoE and multi-latent-attention flags are read and given as `temper.model_shape_moe` says;
--moe-router-dtype is checked against the precision of the checkpoint's router.

`check_hf_checkpoint` says, before anything starts, when a run needs `--hf-checkpoint` and has none:
never a Hugging Face Hub lookup for a model named "None".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from temper.config import ConfigError, ModelConfig
from temper.model_shape_moe import check_router_dtype, given_moe_mla, moe_mla_shape


# What config.json leaves to the model class, by model_type: q/k RMSNorm (Qwen3), GLM4's interleaved
# partial RoPE and its norms after attention and after the MLP, multi-head latent attention (DeepSeek-V3,
# Moonlight, Kimi K2: its q/kv latent norms are Megatron's --qk-layernorm). Every type here uses RoPE.
# GLM-4.5 (glm4_moe) is Llama-like apart from its MoE: q/k norms only with use_qk_norm, half-split partial RoPE.
ARCH_TRAITS: dict[str, dict[str, bool]] = {
    "llama": dict(qk_layernorm=False, rotary_interleaved=False, post_norms=False),
    "mistral": dict(qk_layernorm=False, rotary_interleaved=False, post_norms=False),
    "qwen2": dict(qk_layernorm=False, rotary_interleaved=False, post_norms=False),
    "qwen2_moe": dict(qk_layernorm=False, rotary_interleaved=False, post_norms=False),
    "qwen3": dict(qk_layernorm=True, rotary_interleaved=False, post_norms=False),
    "qwen3_moe": dict(qk_layernorm=True, rotary_interleaved=False, post_norms=False),
    "glm4": dict(qk_layernorm=False, rotary_interleaved=True, post_norms=True),
    "deepseek_v3": dict(qk_layernorm=True, rotary_interleaved=False, post_norms=False, mla=True),
    "glm4_moe": dict(qk_layernorm=False, rotary_interleaved=False, post_norms=False),
}
PARTIAL_ROTARY_DEFAULT = {"glm4_moe": 0.5}
"""The share of head_dim that RoPE rotates when config.json does not say (Hugging Face's config class default)."""
LEARNED_POSITIONS = ("gpt2", "gpt_bigcode", "opt")
"""Model types with learned absolute position embeddings (Megatron's --position-embedding-type learned_absolute)."""


def hf_shape(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The Megatron view of an HF config: {ModelConfig field: value}, None where config.json does not say."""
    cfg = hf_config.get("text_config", hf_config)
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    shape = {
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg.get("intermediate_size"),
        "num_attention_heads": heads,
        "num_query_groups": cfg.get("num_key_value_heads", heads),
        "kv_channels": _kv_channels(cfg),
        "vocab_size": cfg["vocab_size"],
        "padded_vocab_size": cfg["vocab_size"],  # the embedding's rows: HF checkpoints store them padded
        "rotary_base": cfg.get("rope_theta", rope.get("rope_theta")),
        "norm_epsilon": cfg.get("rms_norm_eps", cfg.get("layer_norm_eps")),
        "untie_embeddings_and_output_weights": not cfg.get("tie_word_embeddings", True),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "attention_dropout": float(cfg.get("attention_dropout") or 0.0),
        "hidden_dropout": float(cfg.get("hidden_dropout") or 0.0),
        **_architecture(cfg, rope),
    }
    if shape["position_embedding_type"] == "rope":
        default = PARTIAL_ROTARY_DEFAULT.get(cfg.get("model_type"), 1.0)
        shape["rotary_percent"] = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor")) or default
    traits = ARCH_TRAITS.get(cfg.get("model_type"))
    return {**shape, **moe_mla_shape(cfg, rope, bool(traits.get("mla")) if traits else None)}


def _kv_channels(cfg: dict[str, Any]) -> int:
    """Megatron's per-head width of the attention output (o_proj's input over the heads): head_dim, or
    MLA's v_head_dim (its config.json's head_dim, if any, is the RoPE width; slime passes --kv-channels 128)."""
    if ARCH_TRAITS.get(cfg.get("model_type"), {}).get("mla"):
        return cfg["v_head_dim"]
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def _rotary_interleaved(cfg: dict[str, Any], traits: dict[str, bool]) -> bool | None:
    """Megatron's --rotary-interleaved. Its MLA reads the rope columns in DeepSeek's interleaved pairs by
    itself with the flag off, which is HF's rope_interleave (default true); HF's other layout has no MLA flag."""
    if traits.get("mla"):
        return False if cfg.get("rope_interleave", True) else None
    return cfg.get("rope_interleave", traits.get("rotary_interleaved"))


def _architecture(cfg: dict[str, Any], rope: dict[str, Any]) -> dict[str, Any]:
    """The boolean and named architecture choices of Megatron's flags, as `cfg` states or implies them."""
    model_type = cfg.get("model_type")
    traits = ARCH_TRAITS.get(model_type, {})
    act = cfg.get("hidden_act")
    norm = "RMSNorm" if cfg.get("rms_norm_eps") else "LayerNorm" if cfg.get("layer_norm_eps") else None
    if traits or cfg.get("rope_theta") is not None or rope:
        positions = "rope"
    else:
        positions = "learned_absolute" if model_type in LEARNED_POSITIONS else None
    qkv_bias, linear_bias = _biases(cfg, model_type)
    return {
        "swiglu": None if act is None else act in ("silu", "swish"),
        "normalization": norm,
        "add_qkv_bias": qkv_bias,
        "disable_bias_linear": None if linear_bias is None else not linear_bias,
        "qk_layernorm": cfg.get("use_qk_norm", traits.get("qk_layernorm")),
        "rotary_interleaved": _rotary_interleaved(cfg, traits),
        "post_self_attn_layernorm": traits.get("post_norms"),
        "post_mlp_layernorm": traits.get("post_norms"),
        "position_embedding_type": positions,
        "use_rotary_position_embeddings": None if positions is None else positions == "rope",
        "no_position_embedding": None if positions is None else positions != "learned_absolute",
    }


def _biases(cfg: dict[str, Any], model_type: str | None) -> tuple[bool | None, bool | None]:
    """(bias on q/k/v, bias on the other linear layers: o_proj and the MLP), as the HF model class builds them."""
    if model_type in ("qwen2", "qwen2_moe"):  # q/k/v biases always, no attention_bias key
        return True, False
    if model_type not in ARCH_TRAITS and "attention_bias" not in cfg:
        return None, None
    attention = bool(cfg.get("attention_bias", model_type == "glm4"))  # HF's defaults
    o_proj = attention and model_type not in ("glm4", "glm4_moe")  # GLM4's and GLM-4.5's o_proj have no bias
    return attention, o_proj or bool(cfg.get("mlp_bias", False))


def check_model_shape(model: ModelConfig, hf_checkpoint: str) -> None:
    """Raise ConfigError naming every given shape flag that disagrees with `hf_checkpoint/config.json`."""
    path = Path(hf_checkpoint) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--hf-checkpoint {hf_checkpoint}: {_not_a_model_folder(Path(hf_checkpoint))}")
    config = json.loads(path.read_text())
    expected = hf_shape(config)
    given = {**_given_shape(model), **given_moe_mla(model, expected["num_layers"])}
    wrong = [
        f"--{name.replace('_', '-')} {given[name]} (checkpoint: {expected[name]})"
        for name in given
        if expected.get(name) is not None and not _same(given[name], expected[name])
    ]
    wrong += _vocab_and_length(model, expected)
    if wrong:
        raise ConfigError(
            f"model flags disagree with {path}: {'; '.join(wrong)}; source the scripts/models file that matches "
            f"the checkpoint or drop the flags"
        )
    check_router_dtype(model, config.get("text_config", config))


def _given_shape(model: ModelConfig) -> dict[str, Any]:
    given = {
        name: getattr(model, name)
        for name in (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels",
            "vocab_size", "rotary_base", "norm_epsilon",
        )
        if getattr(model, name) is not None
    }
    if model.num_query_groups is not None:
        given["num_query_groups"] = model.num_query_groups
    elif model.num_attention_heads is not None and not model.group_query_attention:
        given["num_query_groups"] = model.num_attention_heads
    if model.rotary_percent != 1.0:
        given["rotary_percent"] = model.rotary_percent
    script = model.num_layers is not None
    for name in PRESENCE_FLAGS:
        if getattr(model, name) or script:
            given[name] = getattr(model, name)
    if model.add_qkv_bias or model.disable_bias_linear:  # else Megatron's biases are everywhere
        given["add_qkv_bias"] = model.add_qkv_bias
    if model.normalization != "LayerNorm" or script:  # Megatron's default is LayerNorm
        given["normalization"] = model.normalization
    for name in ("use_rotary_position_embeddings", "no_position_embedding"):
        if getattr(model, name):
            given[name] = True
    if model.position_embedding_type != "rope" and not model.use_rotary_position_embeddings:  # the latter wins
        given["position_embedding_type"] = model.position_embedding_type
    for name in ("attention_dropout", "hidden_dropout"):
        if getattr(model, name) != 0.0:
            given[name] = getattr(model, name)
    for name in ("padded_vocab_size", "max_position_embeddings"):
        if getattr(model, name) is not None:
            given[name] = getattr(model, name)
    return given


PRESENCE_FLAGS = (
    "untie_embeddings_and_output_weights", "swiglu", "disable_bias_linear", "qk_layernorm", "rotary_interleaved",
    "post_self_attn_layernorm", "post_mlp_layernorm",
)  # fmt: skip
"""Megatron flags that state an architecture by being there: absent from a shape script means the opposite."""


def _vocab_and_length(model: ModelConfig, expected: dict[str, Any]) -> list[str]:
    """--make-vocab-size-divisible-by must divide the embedding's rows (temper trains the checkpoint's embedding
    as it is, Megatron would pad it to a multiple); --seq-length must fit max_position_embeddings."""
    wrong = []
    rows, multiple = expected["vocab_size"], model.make_vocab_size_divisible_by
    if multiple != 128 and (multiple < 1 or rows % multiple):  # 128: Megatron's default, not a user's choice
        wrong.append(f"--make-vocab-size-divisible-by {multiple} (checkpoint: {rows} embedding rows, not a multiple)")
    limit = model.max_position_embeddings or expected.get("max_position_embeddings")
    if model.seq_length is not None and limit is not None and model.seq_length > limit:
        wrong.append(f"--seq-length {model.seq_length} (checkpoint: max_position_embeddings {limit})")
    return wrong


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def check_hf_checkpoint(cfg: Any) -> None:
    """ConfigError (one line) when the run loads a model but --hf-checkpoint is not set.

    Not one of `config_rules.validate`'s rules: a part tested alone (the data, the placement) needs no model,
    but a run does. The folder itself is checked with the shape flags (`check_model_shape`), its weights
    by `check_weights`."""
    if cfg.hf_checkpoint:
        if (Path(cfg.hf_checkpoint) / "config.json").is_file():
            check_weights(Path(cfg.hf_checkpoint))
        return
    needed_by = _model_needed_by(cfg)
    if needed_by:
        raise ConfigError(
            f"--hf-checkpoint is not set, but {needed_by} loads it; pass --hf-checkpoint DIR, a Hugging Face "
            f"model folder (config.json, weights, tokenizer files; temper never downloads from the Hub)"
        )


def _model_needed_by(cfg: Any) -> str | None:
    """What in this run loads --hf-checkpoint, or None: only --debug-rollout-only against engines
    started elsewhere with a custom generate function needs no model (it still needs the tokenizer for
    --apply-chat-template, which the prompt data check names)."""
    if not cfg.debug_rollout_only:
        return "the trainer (its initial weights)"
    if not cfg.rollout_external_engine_addrs:
        return f"each rollout engine temper starts (--rollout-backend {cfg.rollout_backend})"
    if not cfg.custom_generate_function_path:
        return "the default generate function (its tokenizer)"
    return None


def _not_a_model_folder(folder: Path) -> str:
    if not folder.exists():
        return (
            "no such folder (temper reads models from disk, never from the Hub); point it at a Hugging Face model "
            "folder (config.json, weights, tokenizer files)"
        )
    if not folder.is_dir():
        return "is a file; point it at the Hugging Face model folder that holds config.json, weights and tokenizer"
    return "no config.json there (expected a Hugging Face model folder); point it at the folder that holds config.json"


def check_weights(folder: Path) -> None:
    """ConfigError when the *.safetensors files of a Hugging Face `folder` are missing, cut short, or of
    another shape than its config.json (embedding size, layer count). Reads the files' headers only."""
    index = folder / "model.safetensors.index.json"
    named = set(json.loads(index.read_text()).get("weight_map", {}).values()) if index.is_file() else set()
    absent = sorted(name for name in named if not (folder / name).is_file())
    files = sorted(folder.glob("*.safetensors"))
    if absent or not files:
        what = f"{', '.join(absent)} (named in {index.name}) missing" if absent else "no *.safetensors weights"
        raise ConfigError(f"--hf-checkpoint {folder}: {what}; copy the complete model folder again (temper "
                          f"reads safetensors weights only)")
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes.update(_safetensors_shapes(file))
    config = json.loads((folder / "config.json").read_text())
    expected = hf_shape(config)
    mtp = config.get("text_config", config).get("num_nextn_predict_layers") or 0  # stored after the others
    embed = next((shape for name, shape in shapes.items() if name.endswith("embed_tokens.weight")), None)
    layers = {int(m[1]) for name in shapes if (m := re.search(r"\.layers\.(\d+)\.", name))}
    wrong = []
    if embed is not None and embed != [expected["vocab_size"], expected["hidden_size"]]:
        wrong.append(f"embed_tokens {embed} (config: [{expected['vocab_size']}, {expected['hidden_size']}])")
    if layers and not expected["num_layers"] <= max(layers) + 1 <= expected["num_layers"] + mtp:
        wrong.append(f"{max(layers) + 1} layers (config: num_hidden_layers {expected['num_layers']})")
    if wrong:
        raise ConfigError(f"--hf-checkpoint {folder}: the weights disagree with config.json: {'; '.join(wrong)}; the "
                          f"config.json belongs to another model: put the model's own config.json back")


def _safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors header; ConfigError when the file is shorter than its
    header says (an interrupted copy or download) or is no safetensors file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(length)) if 8 + length <= size else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise ConfigError(f"--hf-checkpoint {file}: not a safetensors file, or cut short inside its header "
                          f"({size:,} bytes); copy it again")
    tensors = {name: t for name, t in header.items() if name != "__metadata__"}
    end = 8 + length + max((t["data_offsets"][1] for t in tensors.values()), default=0)
    if size < end:
        raise ConfigError(f"--hf-checkpoint {file}: truncated, {size:,} of {end:,} bytes (an interrupted copy or "
                          f"download?); copy it again")
    return {name: t["shape"] for name, t in tensors.items()}
