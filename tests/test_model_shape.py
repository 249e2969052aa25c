"""scripts/models/*.sh parse, match the public HF configs, and a mismatch is a one-line error."""

import json
import subprocess
from pathlib import Path

import pytest

from temper.command_line import parse_config
from temper.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]

# Shape fields of the public config.json of each model (the values slime's scripts encode).
PUBLIC_CONFIGS = {
    "qwen3-0.6B": dict(num_hidden_layers=28, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1000000,
                       rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3-1.7B": dict(num_hidden_layers=28, hidden_size=2048, intermediate_size=6144, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1000000,
                       rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3-4B": dict(num_hidden_layers=36, hidden_size=2560, intermediate_size=9728, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1000000,
                     rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3-8B": dict(num_hidden_layers=36, hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1000000,
                     rms_norm_eps=1e-6, tie_word_embeddings=False),
    "llama3-8B": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False),
    "glm4-9B": dict(num_hidden_layers=40, hidden_size=4096, intermediate_size=13696, num_attention_heads=32,
                    num_key_value_heads=2, head_dim=128, vocab_size=151552, rope_theta=10000,
                    partial_rotary_factor=0.5, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def model_args(name: str) -> list[str]:
    script = ROOT / "scripts" / "models" / f"{name}.sh"
    out = subprocess.run(["bash", "-c", f'source "{script}" && printf "%s\\0" "${{MODEL_ARGS[@]}}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def hf_folder(tmp_path: Path, config: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("name", sorted(PUBLIC_CONFIGS))
def test_model_script_matches_public_config(name, tmp_path):
    args = model_args(name)
    assert "--num-layers" in args
    cfg = parse_config(BASE + args + ["--hf-checkpoint", hf_folder(tmp_path, PUBLIC_CONFIGS[name])])
    assert cfg.num_layers == PUBLIC_CONFIGS[name]["num_hidden_layers"]


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("num_hidden_layers", 27, "--num-layers 28 (checkpoint: 27)"),
        ("num_key_value_heads", 4, "--num-query-groups 8 (checkpoint: 4)"),
        ("tie_word_embeddings", False, "--untie-embeddings-and-output-weights False (checkpoint: True)"),
        ("rope_theta", 10000.0, "--rotary-base 1000000.0 (checkpoint: 10000.0)"),
    ],
)
def test_mismatch_is_one_line_error(tmp_path, field, value, flag):
    config = {**PUBLIC_CONFIGS["qwen3-0.6B"], field: value}
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + model_args("qwen3-0.6B") + ["--hf-checkpoint", hf_folder(tmp_path, config)])
    assert flag in str(e.value)
    assert "model flags disagree with" in str(e.value) and "\n" not in str(e.value)


def test_rope_theta_in_rope_parameters(tmp_path):
    config = dict(PUBLIC_CONFIGS["qwen3-0.6B"])
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.pop("rope_theta")}
    parse_config(BASE + model_args("qwen3-0.6B") + ["--hf-checkpoint", hf_folder(tmp_path, config)])


def test_missing_hf_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json there"):
        parse_config(BASE + ["--hf-checkpoint", str(tmp_path)])


def test_hf_checkpoint_that_is_no_folder(tmp_path):
    """A Hub id, a missing folder or the config file itself: one line, never a Hub lookup."""
    for given in ("Qwen/Qwen3-0.6B", str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match=f"^--hf-checkpoint {given}: no such folder .*never from the Hub"):
            parse_config(BASE + ["--hf-checkpoint", given])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="config.json: is a file; point it at the Hugging Face model folder"):
        parse_config(BASE + ["--hf-checkpoint", str(tmp_path / "config.json")])


def test_tiny_script_matches_the_tiny_factory(tmp_path):
    """scripts/models/qwen3-tiny.sh is the shape of temper.testing's tiny Qwen3 (CPU quick start), and
    qwen3-0.6B.sh that of its "qwen3-0.6b" preset (GPU benchmark); crossing them is the usual error."""
    from temper.testing import make_config, resolve_shape, tiny_model_dir

    tiny = str(tiny_model_dir("qwen3"))
    assert parse_config(BASE + model_args("qwen3-tiny") + ["--hf-checkpoint", tiny]).num_layers == 2
    make_config("qwen3", resolve_shape("qwen3-0.6b")).to_json_file(tmp_path / "config.json")
    parse_config(BASE + model_args("qwen3-0.6B") + ["--hf-checkpoint", str(tmp_path)])
    with pytest.raises(ConfigError, match="--num-layers 28 \\(checkpoint: 2\\)"):
        parse_config(BASE + model_args("qwen3-0.6B") + ["--hf-checkpoint", tiny])
