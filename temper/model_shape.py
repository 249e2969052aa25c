"""Check Megatron model-shape flags (slime's scripts/models/*.sh) against a Hugging Face config.json.

slime users `source scripts/models/MODEL.sh` and pass `${MODEL_ARGS[@]}`; temper builds the model from
`--hf-checkpoint`, so a shape flag that disagrees with the checkpoint means the user pointed at the
wrong model or the wrong script. Only flags that were given are checked.

`check_hf_checkpoint` says, before anything starts, when a run needs `--hf-checkpoint` and has none:
never a Hugging Face Hub lookup for a model named "None".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from temper.config import ConfigError, ModelConfig


def hf_shape(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The Megatron view of an HF config: {ModelConfig field: value}."""
    cfg = hf_config.get("text_config", hf_config)
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    shape = {
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg.get("intermediate_size"),
        "num_attention_heads": heads,
        "num_query_groups": cfg.get("num_key_value_heads", heads),
        "kv_channels": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "vocab_size": cfg["vocab_size"],
        "rotary_base": cfg.get("rope_theta", rope.get("rope_theta")),
        "norm_epsilon": cfg.get("rms_norm_eps", cfg.get("layer_norm_eps")),
        "untie_embeddings_and_output_weights": not cfg.get("tie_word_embeddings", True),
    }
    partial = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor"))
    if partial is not None:
        shape["rotary_percent"] = partial
    return shape


def check_model_shape(model: ModelConfig, hf_checkpoint: str) -> None:
    """Raise ConfigError naming every given shape flag that disagrees with `hf_checkpoint/config.json`."""
    path = Path(hf_checkpoint) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--hf-checkpoint {hf_checkpoint}: {_not_a_model_folder(Path(hf_checkpoint))}")
    expected = hf_shape(json.loads(path.read_text()))
    given = _given_shape(model)
    wrong = [
        f"--{name.replace('_', '-')} {given[name]} (checkpoint: {expected[name]})"
        for name in given
        if expected.get(name) is not None and not _same(given[name], expected[name])
    ]
    if wrong:
        raise ConfigError(
            f"model flags disagree with {path}: {'; '.join(wrong)}; source the scripts/models file that matches "
            f"the checkpoint or drop the flags"
        )


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
    if model.num_layers is not None:  # a shape script was given: tying is stated by the flag's presence
        given["untie_embeddings_and_output_weights"] = model.untie_embeddings_and_output_weights
    if model.rotary_percent != 1.0:
        given["rotary_percent"] = model.rotary_percent
    return given


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def check_hf_checkpoint(cfg: Any) -> None:
    """ConfigError (one line) when the run loads a model but --hf-checkpoint is not set.

    Not one of `Config.validate`'s rules: a part tested alone (the data, the placement) needs no model,
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
