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


def test_qwen3_30b_a3b_script_states_the_experts():
    """The script passes slime's MoE flags, each with the value the checkpoint has."""
    cfg = parse_config(BASE + model_args("qwen3-30B-A3B"))
    assert (cfg.num_experts, cfg.moe_ffn_hidden_size, cfg.moe_router_topk) == (128, 768, 8)
    assert (cfg.moe_layer_freq, cfg.moe_router_score_function, cfg.moe_router_pre_softmax) == ("([1]*48)", "softmax", False)
    assert cfg.moe_grouped_gemm and cfg.moe_permute_fusion and cfg.moe_token_dispatcher_type == "alltoall"


@pytest.mark.parametrize("change, error", [
    (dict(num_experts=64), r"--num-experts 128 \(checkpoint: 64\)"),
    (dict(moe_intermediate_size=1536), r"--moe-ffn-hidden-size 768 \(checkpoint: 1536\)"),
    (dict(num_experts_per_tok=4), r"--moe-router-topk 8 \(checkpoint: 4\)"),
    (dict(decoder_sparse_step=2), r"--moe-layer-freq \(\[1\]\*48\) \(checkpoint: (\[0\]\*1\+\[1\]\*1\+){23}\[0\]\*1\+\[1\]\*1\)"),
    (dict(mlp_only_layers=[0]), r"--moe-layer-freq \(\[1\]\*48\) \(checkpoint: \[0\]\*1\+\[1\]\*47\)"),
    (dict(norm_topk_prob=False), r"--moe-router-pre-softmax False \(checkpoint: True\)"),
])  # fmt: skip
def test_qwen3_30b_a3b_script_rejects_other_experts(change, error, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(QWEN3_30B_A3B, **change)))
    with pytest.raises(ConfigError, match=error) as e:
        check("qwen3-30B-A3B", tmp_path)
    assert "\n" not in str(e.value)


def test_slime_router_dtype_is_honoured_for_qwen3_moe_and_refused_for_mixtral(tmp_path):
    """slime's Qwen3-30B-A3B script asks for fp32 routing, which temper's trainer does for Qwen3-MoE
    (moe_routing.route_in_fp32); Mixtral's router it leaves in the compute dtype."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_30B_A3B))
    args = BASE + model_args("qwen3-30B-A3B") + ["--hf-checkpoint", str(tmp_path)]
    assert "--moe-router-dtype" in args and parse_config(args).moe_router_dtype == "fp32"
    mixtral = {**QWEN3_30B_A3B, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
               "num_local_experts": 128}  # fmt: skip
    del mixtral["num_experts"]
    (tmp_path / "config.json").write_text(json.dumps(mixtral))
    with pytest.raises(ConfigError, match=r"--moe-router-dtype fp32 is not supported for mixtral: .*compute dtype"):
        parse_config(BASE + ["--moe-router-dtype", "fp32", "--hf-checkpoint", str(tmp_path)])


def test_dense_script_rejects_a_moe_checkpoint(tmp_path):
    """A shape script without --num-experts is a dense model, as in Megatron."""
    make_config("qwen3_moe", resolve_shape("qwen3-30b-a3b")).to_json_file(tmp_path / "config.json")
    args = [a for a in model_args("qwen3-30B-A3B")]
    dense = args[: args.index("--moe-ffn-hidden-size")]
    with pytest.raises(ConfigError, match=r"--num-experts 0 \(checkpoint: 128\)"):
        parse_config(BASE + dense + ["--hf-checkpoint", str(tmp_path)])


def test_moe_flags_on_the_tiny_factory_model(tmp_path):
    """Each MoE flag with the tiny qwen3_moe checkpoint's value passes, --moe-layer-freq in its int and list forms;
    another value is one line naming the flag and the checkpoint's value."""
    make_config("qwen3_moe", resolve_shape("tiny", mlp_only_layers=(1,))).to_json_file(tmp_path / "config.json")
    hf = ["--hf-checkpoint", str(tmp_path)]
    flags = ["--num-experts", "8", "--moe-ffn-hidden-size", "64", "--moe-router-topk", "2",
             "--moe-router-score-function", "softmax", "--moe-shared-expert-intermediate-size", "0",
             "--moe-router-topk-scaling-factor", "1.0", "--moe-grouped-gemm", "--moe-permute-fusion",
             "--moe-token-dispatcher-type", "allgather", "--moe-token-drop-policy", "probs"]  # fmt: skip
    assert parse_config(BASE + flags + ["--moe-layer-freq", "([1]+[0])"] + hf).num_experts == 8
    assert parse_config(BASE + ["--moe-layer-freq", "2"] + hf).moe_layer_freq == "2"  # layers 0, 2, ...
    for wrong, error in [(["--num-experts", "16"], "--num-experts 16 (checkpoint: 8)"),
                         (["--moe-ffn-hidden-size", "32"], "--moe-ffn-hidden-size 32 (checkpoint: 64)"),
                         (["--moe-router-topk", "4"], "--moe-router-topk 4 (checkpoint: 2)"),
                         (["--moe-layer-freq", "1"], "--moe-layer-freq 1 (checkpoint: [1]*1+[0]*1)"),
                         (["--moe-router-pre-softmax"], "--moe-router-pre-softmax True (checkpoint: False)")]:
        with pytest.raises(ConfigError) as e:
            parse_config(BASE + wrong + hf)
        assert error in str(e.value) and "\n" not in str(e.value)
