"""scripts/models/deepseek-v3.sh and moonlight-16B-A3B.sh against the public configs and the tiny-model
factory's presets of the same shapes ("deepseek-v3", "moonlight-16b-a3b")."""

import json
import subprocess
from pathlib import Path

import pytest

from temper.command_line import parse_config
from temper.config import ConfigError
from temper.model_shape import hf_shape
from temper.testing import make_config, resolve_shape

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]
MLA = dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", hidden_act="silu",
           attention_bias=False, norm_topk_prob=True, tie_word_embeddings=False, qk_nope_head_dim=128,
           qk_rope_head_dim=64, v_head_dim=128, kv_lora_rank=512)
# deepseek-ai/DeepSeek-V3's config.json (shape fields; no head_dim, YaRN RoPE scaling).
DEEPSEEK_V3 = dict(MLA, num_hidden_layers=61, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                   num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, n_routed_experts=256,
                   n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4, first_k_dense_replace=3,
                   routed_scaling_factor=2.5, vocab_size=129280, rope_theta=10000, rms_norm_eps=1e-6,
                   max_position_embeddings=163840, num_nextn_predict_layers=1,
                   rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32,
                                     beta_slow=1, mscale=1.0, mscale_all_dim=1.0))
# moonshotai/Moonlight-16B-A3B's config.json (shape fields).
MOONLIGHT = dict(MLA, num_hidden_layers=27, hidden_size=2048, intermediate_size=11264, moe_intermediate_size=1408,
                 num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, n_routed_experts=64,
                 n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1, first_k_dense_replace=1,
                 routed_scaling_factor=2.446, vocab_size=163840, rope_theta=50000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, num_nextn_predict_layers=0)
CASES = [("deepseek-v3", "deepseek-v3", DEEPSEEK_V3), ("moonlight-16B-A3B", "moonlight-16b-a3b", MOONLIGHT)]


def model_args(name: str) -> list[str]:
    script = ROOT / "scripts" / "models" / f"{name}.sh"
    out = subprocess.run(["bash", "-c", f'source "{script}" && printf "%s\\0" "${{MODEL_ARGS[@]}}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def check(name: str, folder: Path, *extra: str) -> int:
    return parse_config(BASE + model_args(name) + list(extra) + ["--hf-checkpoint", str(folder)]).num_layers


@pytest.mark.parametrize("name, preset, public", CASES, ids=[c[0] for c in CASES])
def test_script_matches_public_config(name, preset, public, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(public))
    assert check(name, tmp_path) == public["num_hidden_layers"]


@pytest.mark.parametrize("name, preset, public", CASES, ids=[c[0] for c in CASES])
def test_script_matches_factory_preset(name, preset, public, tmp_path):
    """The factory's preset with the public config's RoPE scaling (the factory builds none)."""
    config = make_config("deepseek_v3", resolve_shape(preset)).to_dict()
    yarn = public.get("rope_scaling", {})
    config["rope_parameters"].update(yarn, rope_type=yarn.get("type", "default"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert check(name, tmp_path) == resolve_shape(preset).num_layers


@pytest.mark.parametrize("name, preset, public", CASES, ids=[c[0] for c in CASES])
def test_factory_preset_is_the_public_shape(name, preset, public):
    config = make_config("deepseek_v3", resolve_shape(preset))
    expected = {k: v for k, v in public.items() if k not in ("rope_scaling", "num_nextn_predict_layers")}
    assert config.rope_parameters["rope_theta"] == expected.pop("rope_theta")  # transformers 5 keeps it there
    for field, value in expected.items():
        assert getattr(config, field) == value, field


def test_mla_shape_flags():
    """--kv-channels is MLA's value width; the latent norms are --qk-layernorm; Megatron's MLA takes DeepSeek's
    interleaved RoPE with --rotary-interleaved off (HF's non-interleaved layout leaves the flag unchecked)."""
    shape = hf_shape(MOONLIGHT)
    assert (shape["kv_channels"], shape["qk_layernorm"], shape["rotary_interleaved"]) == (128, True, False)
    assert hf_shape(dict(MOONLIGHT, rope_interleave=False))["rotary_interleaved"] is None


def test_shortened_stack_and_wrong_script(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(dict(DEEPSEEK_V3, num_hidden_layers=5)))
    monkeypatch.setenv("MODEL_ARGS_NUM_LAYERS", "5")
    assert check("deepseek-v3", tmp_path) == 5
    monkeypatch.delenv("MODEL_ARGS_NUM_LAYERS")
    with pytest.raises(ConfigError, match=r"--num-layers 61 \(checkpoint: 5\)"):
        check("deepseek-v3", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(MOONLIGHT))
    with pytest.raises(ConfigError, match=r"--rotary-interleaved True \(checkpoint: False\)"):
        check("moonlight-16B-A3B", tmp_path, "--rotary-interleaved")


@pytest.mark.parametrize("name, preset, public", CASES, ids=[c[0] for c in CASES])
def test_script_states_latent_attention_and_experts(name, preset, public):
    """The scripts pass slime's MLA and MoE flags, each with the public config's value."""
    cfg = parse_config(BASE + model_args(name))
    dense, layers = public["first_k_dense_replace"], public["num_hidden_layers"]
    assert cfg.multi_latent_attention and cfg.moe_router_enable_expert_bias and cfg.moe_router_bias_update_rate == 0
    assert cfg.moe_layer_freq == f"([0]*{dense}+[1]*{layers - dense})"
    assert (cfg.num_experts, cfg.moe_router_topk, cfg.moe_ffn_hidden_size) == (
        public["n_routed_experts"], public["num_experts_per_tok"], public["moe_intermediate_size"])
    assert cfg.moe_shared_expert_intermediate_size == public["n_shared_experts"] * public["moe_intermediate_size"]
    assert (cfg.moe_router_num_groups, cfg.moe_router_group_topk) == (public["n_group"], public["topk_group"])
    assert cfg.moe_router_topk_scaling_factor == public["routed_scaling_factor"]
    assert (cfg.kv_lora_rank, cfg.qk_head_dim, cfg.qk_pos_emb_head_dim, cfg.v_head_dim) == (512, 128, 64, 128)
    assert cfg.q_lora_rank == public["q_lora_rank"] and cfg.moe_router_dtype == "fp32"
    assert cfg.moe_router_load_balancing_type == "seq_aux_loss" and cfg.moe_aux_loss_coeff == 0


@pytest.mark.parametrize("name, change, error", [
    ("deepseek-v3", dict(first_k_dense_replace=1), r"--moe-layer-freq \(\[0\]\*3\+\[1\]\*58\) \(checkpoint: \[0\]\*1\+\[1\]\*60\)"),
    ("deepseek-v3", dict(q_lora_rank=None), r"--q-lora-rank 1536 \(checkpoint: 0\)"),
    ("deepseek-v3", dict(rope_scaling=None), r"--rotary-scaling-factor 40.0 \(checkpoint: 1.0\)"),
    ("deepseek-v3", dict(n_group=1, topk_group=1), r"--moe-router-num-groups 8 \(checkpoint: 1\); --moe-router-group-topk 4"),
    ("moonlight-16B-A3B", dict(q_lora_rank=1536), r"--q-lora-rank 0 \(checkpoint: 1536\)"),
    ("moonlight-16B-A3B", dict(kv_lora_rank=256), r"--kv-lora-rank 512 \(checkpoint: 256\)"),
    ("moonlight-16B-A3B", dict(qk_nope_head_dim=64), r"--qk-head-dim 128 \(checkpoint: 64\)"),
    ("moonlight-16B-A3B", dict(qk_rope_head_dim=32), r"--qk-pos-emb-head-dim 64 \(checkpoint: 32\)"),
    ("moonlight-16B-A3B", dict(n_shared_experts=1), r"--moe-shared-expert-intermediate-size 2816 \(checkpoint: 1408\)"),
    ("moonlight-16B-A3B", dict(routed_scaling_factor=1.0), r"--moe-router-topk-scaling-factor 2.446 \(checkpoint: 1.0\)"),
])  # fmt: skip
def test_script_rejects_another_mla_or_moe_shape(name, change, error, tmp_path):
    public = DEEPSEEK_V3 if name == "deepseek-v3" else MOONLIGHT
    (tmp_path / "config.json").write_text(json.dumps(dict(public, **change)))
    with pytest.raises(ConfigError, match=error) as e:
        check(name, tmp_path)
    assert "\n" not in str(e.value)


def test_yarn_mscale_is_checked(tmp_path):
    rope = dict(DEEPSEEK_V3["rope_scaling"], mscale=0.707)
    (tmp_path / "config.json").write_text(json.dumps(dict(DEEPSEEK_V3, rope_scaling=rope)))
    with pytest.raises(ConfigError, match=r"--mscale 1.0 \(checkpoint: 0.707\)"):
        check("deepseek-v3", tmp_path)


def test_moe_flags_on_the_tiny_factory_model(tmp_path):
    """Each MoE/MLA flag with the tiny deepseek_v3 checkpoint's value passes; the int and list forms of
    --moe-layer-freq both read (its first layer is dense)."""
    make_config("deepseek_v3").to_json_file(tmp_path / "config.json")
    flags = ["--num-layers", "2", "--num-experts", "8", "--moe-ffn-hidden-size", "64", "--moe-router-topk", "2",
             "--moe-shared-expert-intermediate-size", "64", "--moe-router-score-function", "sigmoid",
             "--moe-router-enable-expert-bias", "--moe-router-bias-update-rate", "0", "--moe-router-num-groups", "4",
             "--moe-router-group-topk", "2", "--moe-router-topk-scaling-factor", "2.5", "--multi-latent-attention",
             "--q-lora-rank", "64", "--kv-lora-rank", "32", "--qk-head-dim", "32", "--qk-pos-emb-head-dim", "16",
             "--v-head-dim", "32", "--rotary-scaling-factor", "1", "--swiglu", "--disable-bias-linear", "--qk-layernorm",
             "--normalization", "RMSNorm"]  # fmt: skip
    hf = ["--hf-checkpoint", str(tmp_path)]
    assert parse_config(BASE + flags + ["--moe-layer-freq", "[0]+[1]", "--moe-router-dtype", "fp32"] + hf)
    assert parse_config(BASE + ["--moe-layer-freq", "'([0]*1+[1]*1)'"] + hf)
    with pytest.raises(ConfigError, match=r"--moe-layer-freq 1 \(checkpoint: \[0\]\*1\+\[1\]\*1\)"):
        parse_config(BASE + flags + hf)  # an MoE script without --moe-layer-freq: experts in every layer
    with pytest.raises(ConfigError, match=r"--moe-layer-freq 2 \(checkpoint: \[0\]\*1\+\[1\]\*1\)"):
        parse_config(BASE + ["--moe-layer-freq", "2"] + hf)
