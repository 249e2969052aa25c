"""Check Megatron model-shape flags (slime's scripts/models/*.sh) against a Hugging Face config.json.

slime users `source scripts/models/MODEL.sh` and pass `${MODEL_ARGS[@]}`; temper builds the model from
`--hf-checkpoint`, so a shape flag that disagrees with the checkpoint means the user pointed at the
wrong model or the wrong script. Only flags that were given are checked.

`check_hf_checkpoint` says, before anything starts, when a run needs `--hf-checkpoint` and has none:
never a Hugging Face Hub lookup for a model named "None".
"""

from __future__ import annotations

import json
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
    but a run does. The folder itself is checked with the shape flags (`check_model_shape`)."""
    if cfg.hf_checkpoint:
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
