"""The architecture flags of scripts/models/*.sh (--swiglu, --disable-bias-linear, --add-qkv-bias, --qk-layernorm,
--normalization, --rotary-interleaved, GLM4's post-norms, RoPE) against complete config.json files: the real
scripts pass on their own models with slime's usual training flags, and fail, naming the flag, on another
architecture."""

import json

import pytest
from test_model_shape import BASE, PUBLIC_CONFIGS, model_args

from temper.command_line import parse_config
from temper.config import ConfigError
from temper.testing import make_config

# The architecture fields of each model's public config.json (the shapes are in PUBLIC_CONFIGS).
QWEN3 = dict(model_type="qwen3", hidden_act="silu", attention_bias=False, attention_dropout=0.0,
             max_position_embeddings=40960)
ARCHITECTURE = {
    **{name: QWEN3 for name in PUBLIC_CONFIGS if name.startswith("qwen3")},
    "llama3-8B": dict(model_type="llama", hidden_act="silu", attention_bias=False, mlp_bias=False,
                      attention_dropout=0.0, max_position_embeddings=8192),
    "glm4-9B": dict(model_type="glm4", hidden_act="silu", attention_bias=True, attention_dropout=0.0,
                    max_position_embeddings=32768),
}  # fmt: skip
SLIME_MISC_ARGS = [
    "--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--accumulate-allreduce-grads-in-fp32",
    "--attention-softmax-in-fp32", "--attention-backend", "flash", "--recompute-granularity", "full",
    "--recompute-method", "uniform", "--recompute-num-layers", "1", "--seq-length", "4096", "--no-rope-fusion",
]  # fmt: skip
"""What slime's run scripts pass beside MODEL_ARGS (their MISC_ARGS and PERF_ARGS)."""


def folder(tmp_path, config: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("name", sorted(ARCHITECTURE))
def test_script_passes_on_its_complete_config(name, tmp_path):
    checkpoint = folder(tmp_path, {**PUBLIC_CONFIGS[name], **ARCHITECTURE[name]})
    cfg = parse_config(BASE + model_args(name) + SLIME_MISC_ARGS + ["--hf-checkpoint", checkpoint])
    assert cfg.recompute_activations and cfg.swiglu


@pytest.mark.parametrize("script, model, wrong", [
    ("qwen3-8B", "llama3-8B", ["--qk-layernorm True (checkpoint: False)"]),
    ("llama3-8B", "glm4-9B", ["--rotary-interleaved False (checkpoint: True)",
                              "--add-qkv-bias False (checkpoint: True)",
                              "--post-self-attn-layernorm False (checkpoint: True)"]),
    ("glm4-9B", "qwen3-8B", ["--qk-layernorm False (checkpoint: True)", "--add-qkv-bias True (checkpoint: False)",
                             "--post-mlp-layernorm True (checkpoint: False)"]),
])  # fmt: skip
def test_script_of_another_architecture_is_named(script, model, wrong, tmp_path):
    """The architecture of `model` with the shape `script` states: only architecture flags disagree."""
    checkpoint = folder(tmp_path, {**PUBLIC_CONFIGS[script], **ARCHITECTURE[model], "partial_rotary_factor": None})
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + model_args(script) + ["--hf-checkpoint", checkpoint])
    assert all(part in str(e.value) for part in wrong), str(e.value)


def test_qwen2_needs_add_qkv_bias(tmp_path):
    """Qwen2's config.json has no attention_bias key: its q/k/v biases come with the model type."""
    make_config("qwen2").to_json_file(tmp_path / "config.json")
    flags = [f for f in model_args("qwen3-tiny") if f != "--qk-layernorm"]
    with pytest.raises(ConfigError, match=r"--add-qkv-bias False \(checkpoint: True\)"):
        parse_config(BASE + flags + ["--hf-checkpoint", str(tmp_path)])
    assert parse_config(BASE + flags + ["--add-qkv-bias", "--hf-checkpoint", str(tmp_path)]).add_qkv_bias


def test_dropout_other_than_the_checkpoints_is_refused(tmp_path):
    checkpoint = folder(tmp_path, {**PUBLIC_CONFIGS["qwen3-0.6B"], **QWEN3})
    with pytest.raises(ConfigError, match=r"--attention-dropout 0.1 \(checkpoint: 0.0\)"):
        parse_config(BASE + ["--attention-dropout", "0.1", "--hf-checkpoint", checkpoint])
