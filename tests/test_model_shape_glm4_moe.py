"""GLM-4.5 and GLM-4.5-Air (Glm4MoeForCausalLM, model type glm4_moe): slime's scripts/models/glm4.5-355B-A32B.sh and
glm4.5-106B-A12B.sh flags against the public config.json shape fields and against a config that Hugging Face's
Glm4MoeConfig writes; a checkpoint with other experts is one line naming the flag. temper's own
scripts/models/glm4.5-106B-A12B.sh is slime's, and the tiny-model factory's presets "glm4.5" and "glm4.5-air" are
the public shapes."""

import json
import subprocess
from pathlib import Path

import pytest
from transformers import AutoConfig

from temper.command_line import parse_config
from temper.config import ConfigError
from temper.testing import make_config, resolve_shape

BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]
# zai-org/GLM-4.5's config.json (shape fields).
GLM45 = dict(architectures=["Glm4MoeForCausalLM"], model_type="glm4_moe", num_hidden_layers=92, hidden_size=5120,
             intermediate_size=12288, moe_intermediate_size=1536, num_attention_heads=96, num_key_value_heads=8,
             head_dim=128, n_routed_experts=160, n_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=3,
             n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True, partial_rotary_factor=0.5,
             rope_theta=1000000, rms_norm_eps=1e-5, vocab_size=151552, max_position_embeddings=131072,
             attention_bias=True, use_qk_norm=True, tie_word_embeddings=False, hidden_act="silu",
             num_nextn_predict_layers=1)  # fmt: skip
# zai-org/GLM-4.5-Air's (the same fields).
GLM45_AIR = dict(GLM45, num_hidden_layers=46, hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408,
                 n_routed_experts=128, first_k_dense_replace=1, routed_scaling_factor=1.0, use_qk_norm=False)


def slime_flags(dense: int, moe: int, hidden: int, ffn: int, moe_ffn: int, experts: int, qk_norm: bool,
                scaling: list[str]) -> list[str]:  # fmt: skip
    """slime's GLM-4.5 MODEL_ARGS (scripts/models/glm4.5-355B-A32B.sh; -106B-A12B.sh differs in the numbers, has
    no --qk-layernorm and no --moe-router-topk-scaling-factor)."""
    return [
        "--disable-bias-linear", *(["--qk-layernorm"] if qk_norm else []), "--group-query-attention",
        "--num-attention-heads", "96", "--num-query-groups", "8", "--kv-channels", "128",
        "--num-layers", str(dense + moe), "--hidden-size", str(hidden), "--ffn-hidden-size", str(ffn),
        "--add-qkv-bias", "--normalization", "RMSNorm", "--position-embedding-type", "rope", "--rotary-percent", "0.5",
        "--swiglu", "--untie-embeddings-and-output-weights", "--vocab-size", "151552", "--rotary-base", "1000000",
        "--moe-ffn-hidden-size", str(moe_ffn), "--moe-shared-expert-intermediate-size", str(moe_ffn),
        "--moe-router-pre-softmax", "--moe-router-score-function", "sigmoid", "--moe-router-enable-expert-bias",
        "--moe-router-bias-update-rate", "0", "--moe-router-load-balancing-type", "seq_aux_loss",
        "--moe-token-dispatcher-type", "alltoall", "--moe-router-topk", "8", *scaling,
        "--moe-layer-freq", f"[0]*{dense}+[1]*{moe}", "--num-experts", str(experts), "--moe-grouped-gemm",
        "--moe-router-dtype", "fp32", "--moe-permute-fusion", "--moe-aux-loss-coeff", "0",
    ]  # fmt: skip


GLM45_FLAGS = slime_flags(3, 89, 5120, 12288, 1536, 160, True, ["--moe-router-topk-scaling-factor", "2.5"])
GLM45_AIR_FLAGS = slime_flags(1, 45, 4096, 10944, 1408, 128, False, [])
CASES = [(GLM45, GLM45_FLAGS), (GLM45_AIR, GLM45_AIR_FLAGS)]


def check(flags: list[str], config: dict, tmp_path) -> int:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return parse_config(BASE + flags + ["--hf-checkpoint", str(tmp_path)]).num_layers


@pytest.mark.parametrize("public, flags", CASES, ids=["glm4.5", "glm4.5-air"])
def test_slime_script_matches_public_config(public, flags, tmp_path):
    assert check(flags, public, tmp_path) == public["num_hidden_layers"]


@pytest.mark.parametrize("public, flags", CASES, ids=["glm4.5", "glm4.5-air"])
def test_slime_script_matches_a_config_written_by_hugging_face(public, flags, tmp_path):
    """Glm4MoeConfig's own config.json: RoPE under rope_parameters, partial_rotary_factor its default 0.5."""
    fields = {k: v for k, v in public.items() if k not in ("architectures", "model_type", "rope_theta",
                                                           "partial_rotary_factor", "num_nextn_predict_layers")}
    config = AutoConfig.for_model("glm4_moe", **fields, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    assert check(flags, config.to_dict(), tmp_path) == public["num_hidden_layers"]


@pytest.mark.parametrize("change, error", [
    (dict(n_routed_experts=128), "--num-experts 160 (checkpoint: 128)"),
    (dict(first_k_dense_replace=1), "--moe-layer-freq [0]*3+[1]*89 (checkpoint: [0]*1+[1]*91)"),
    (dict(n_shared_experts=2), "--moe-shared-expert-intermediate-size 1536 (checkpoint: 3072)"),
    (dict(routed_scaling_factor=1.0), "--moe-router-topk-scaling-factor 2.5 (checkpoint: 1.0)"),
    (dict(use_qk_norm=False), "--qk-layernorm True (checkpoint: False)"),
    (dict(partial_rotary_factor=1.0), "--rotary-percent 0.5 (checkpoint: 1.0)"),
])  # fmt: skip
def test_other_experts_or_attention_are_one_line_naming_the_flag(change, error, tmp_path):
    with pytest.raises(ConfigError) as e:
        check(GLM45_FLAGS, {**GLM45, **change}, tmp_path)
    assert error in str(e.value) and "\n" not in str(e.value)


def script_args(name: str) -> list[str]:
    script = Path(__file__).resolve().parents[1] / "scripts" / "models" / f"{name}.sh"
    out = subprocess.run(["bash", "-c", f'source "{script}" && printf "%s\\0" "${{MODEL_ARGS[@]}}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def flag_groups(args: list[str]) -> list[tuple[str, ...]]:
    """Each flag with its values, in a canonical order."""
    groups: list[list[str]] = []
    for arg in args:
        if arg.startswith("--"):
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return sorted(tuple(group) for group in groups)


def test_air_script_is_slimes_flags_and_matches_the_public_config_and_the_factory_preset(tmp_path):
    """scripts/models/glm4.5-106B-A12B.sh: slime's flags for GLM-4.5-Air, which pass on its config.json and on the
    tiny-model factory's "glm4.5-air" preset."""
    args = script_args("glm4.5-106B-A12B")
    assert flag_groups(args) == flag_groups(GLM45_AIR_FLAGS)
    assert check(args, GLM45_AIR, tmp_path) == 46
    make_config("glm4_moe", resolve_shape("glm4.5-air")).to_json_file(tmp_path / "config.json")
    assert parse_config(BASE + args + ["--hf-checkpoint", str(tmp_path)]).num_layers == 46


@pytest.mark.parametrize("preset, public", [("glm4.5", GLM45), ("glm4.5-air", GLM45_AIR)], ids=["glm4.5", "glm4.5-air"])
def test_factory_preset_is_the_public_shape(preset, public, tmp_path):
    config = make_config("glm4_moe", resolve_shape(preset))
    expected = {k: v for k, v in public.items() if k not in ("architectures", "model_type", "num_nextn_predict_layers")}
    assert config.rope_parameters["rope_theta"] == expected.pop("rope_theta")  # transformers 5 keeps it there
    assert config.rope_parameters["partial_rotary_factor"] == expected.pop("partial_rotary_factor")
    for field, value in expected.items():
        assert getattr(config, field) == value, field
    assert check(GLM45_FLAGS if preset == "glm4.5" else GLM45_AIR_FLAGS, config.to_dict(), tmp_path) == \
        public["num_hidden_layers"]
