"""The tiny-model factory's deepseek_v3 arch: an HF folder in DeepSeek-V3's published checkpoint layout that
loads, generates and is reproducible, and the real-shape presets (built without weights)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from temper.testing.tiny_models import PRESETS, ModelShape, build_tiny_model, make_config, tiny_model_dir
from temper.testing.tokenizer import special_token_ids


def test_loads_and_generates():
    path = tiny_model_dir("deepseek_v3")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "DeepseekV3ForCausalLM" and model.config.pad_token_id is None
    assert model.config.eos_token_id == special_token_ids()["<|im_end|>"]
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_config_and_checkpoint_names():
    path = tiny_model_dir("deepseek_v3")
    config = AutoConfig.from_pretrained(path)
    assert (config.q_lora_rank, config.kv_lora_rank, config.qk_nope_head_dim, config.qk_rope_head_dim,
            config.v_head_dim) == (64, 32, 32, 16, 32)
    assert (config.n_routed_experts, config.n_group, config.topk_group, config.first_k_dense_replace) == (8, 4, 2, 1)
    assert config.num_key_value_heads == config.num_attention_heads and config.head_dim == 16  # the RoPE width
    weights = load_file(path / "model.safetensors")
    assert weights["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].shape == (32 + 16, 128)
    assert weights["model.layers.0.self_attn.kv_b_proj.weight"].shape == (4 * (32 + 32), 32)
    assert weights["model.layers.0.self_attn.q_b_proj.weight"].shape == (4 * (32 + 16), 64)
    assert weights["model.layers.0.mlp.gate_proj.weight"].shape == (256, 128)  # the first layer is dense
    assert weights["model.layers.1.mlp.experts.7.gate_proj.weight"].shape == (64, 128)
    assert weights["model.layers.1.mlp.shared_experts.down_proj.weight"].shape == (128, 64)
    assert weights["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32


def test_moonlight_style_variant(tmp_path):
    path = build_tiny_model(tmp_path, "deepseek_v3", q_lora_rank=None, n_group=1, topk_group=1, n_shared_experts=2)
    weights = load_file(path / "model.safetensors")
    assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 48, 128)
    assert not any("q_a_proj" in name for name in weights)
    assert weights["model.layers.1.mlp.shared_experts.gate_proj.weight"].shape == (128, 128)


def test_same_seed_gives_identical_files(tmp_path):
    first = build_tiny_model(tmp_path / "a", "deepseek_v3", seed=3)
    second = build_tiny_model(tmp_path / "b", "deepseek_v3", seed=3)
    for name in ("config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("preset, low, high", [("moonlight-16b-a3b", 15.9e9, 16.0e9), ("deepseek-v3", 671e9, 671.1e9)])
def test_real_shape_presets_without_weights(preset, low, high):
    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForCausalLM.from_config(make_config("deepseek_v3", PRESETS[preset]))
                    .parameters())
    assert low < total < high  # Moonlight-16B-A3B: 16B; DeepSeek-V3: 671B without its MTP layer


@pytest.mark.parametrize("fields, match", [(dict(n_group=3), "n_group"), (dict(num_experts_per_tok=5), "topk_group")])
def test_bad_routing_shapes_are_rejected(fields, match):
    with pytest.raises(ValueError, match=match):
        make_config("deepseek_v3", ModelShape(**fields))
