"""scripts/models/qwen3-30B-A3B.sh and glm4-9B.sh against the public configs and the tiny-model factory's
presets of the same shapes ("qwen3-30b-a3b", "glm4-9b")."""

import json
import subprocess
from pathlib import Path

import pytest

from temper.command_line import parse_config
from temper.config import ConfigError
from temper.testing import make_config, resolve_shape

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]
# Qwen/Qwen3-30B-A3B's config.json (shape fields).
QWEN3_30B_A3B = dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", num_hidden_layers=48,
                     hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                     num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                     num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=40960)


def model_args(name: str) -> list[str]:
    script = ROOT / "scripts" / "models" / f"{name}.sh"
    out = subprocess.run(["bash", "-c", f'source "{script}" && printf "%s\\0" "${{MODEL_ARGS[@]}}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def check(name: str, folder: Path) -> int:
    return parse_config(BASE + model_args(name) + ["--hf-checkpoint", str(folder)]).num_layers


def test_qwen3_30b_a3b_script_matches_public_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_30B_A3B))
    assert check("qwen3-30B-A3B", tmp_path) == 48


@pytest.mark.parametrize("name, arch, preset", [("qwen3-30B-A3B", "qwen3_moe", "qwen3-30b-a3b"),
                                                ("glm4-9B", "glm4", "glm4-9b")])
def test_script_matches_factory_preset(name, arch, preset, tmp_path):
    make_config(arch, resolve_shape(preset)).to_json_file(tmp_path / "config.json")
    assert check(name, tmp_path) == resolve_shape(preset).num_layers


def test_factory_preset_is_the_public_qwen3_30b_a3b(tmp_path):
    config = make_config("qwen3_moe", resolve_shape("qwen3-30b-a3b"))
    expected = dict(QWEN3_30B_A3B)
    assert config.rope_parameters["rope_theta"] == expected.pop("rope_theta")  # transformers 5 keeps it there
    for field, value in expected.items():
        assert getattr(config, field) == value, field


def test_glm4_script_rejects_a_full_rotary_checkpoint(tmp_path):
    make_config("glm4", resolve_shape("glm4-9b", partial_rotary_factor=1.0)).to_json_file(tmp_path / "config.json")
    with pytest.raises(ConfigError, match=r"--rotary-percent 0.5 \(checkpoint: 1.0\)"):
        check("glm4-9B", tmp_path)
