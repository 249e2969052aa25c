"""The tiny-model factory's glm4_moe arch (GLM-4.5): an HF folder in GLM-4.5's published checkpoint layout that
loads, generates and is reproducible, and the real-shape presets (built without weights)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from temper.testing.tiny_models import PRESETS, ModelShape, build_tiny_model, make_config, tiny_model_dir
from temper.testing.tokenizer import special_token_ids


def test_loads_and_generates():
    path = tiny_model_dir("glm4_moe")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "Glm4MoeForCausalLM" and model.config.pad_token_id is None
    assert model.config.eos_token_id == special_token_ids()["<|im_end|>"]
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_config_and_checkpoint_names():
    path = tiny_model_dir("glm4_moe")
    config = AutoConfig.from_pretrained(path)
    assert (config.n_routed_experts, config.n_group, config.topk_group, config.first_k_dense_replace) == (8, 4, 2, 1)
    assert (config.n_shared_experts, config.routed_scaling_factor, config.use_qk_norm, config.attention_bias) == (
        1, 2.5, True, True)
    assert config.head_dim == 32 and config.rope_parameters["partial_rotary_factor"] == 0.5
    on_disk = json.loads((path / "config.json").read_text())
    assert on_disk["partial_rotary_factor"] == 0.5 and on_disk["num_nextn_predict_layers"] == 0  # as published
    weights = load_file(path / "model.safetensors")
    assert weights["model.layers.0.mlp.gate_proj.weight"].shape == (256, 128)  # the first layer is dense
    assert weights["model.layers.0.self_attn.q_proj.bias"].shape == (128,)
    assert "model.layers.0.self_attn.o_proj.bias" not in weights
    assert weights["model.layers.1.self_attn.k_norm.weight"].shape == (32,)
    assert weights["model.layers.1.mlp.experts.7.gate_proj.weight"].shape == (64, 128)
    assert weights["model.layers.1.mlp.shared_experts.down_proj.weight"].shape == (128, 64)
    assert weights["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32


def test_air_style_variant_has_no_qk_norm(tmp_path):
    path = build_tiny_model(tmp_path, "glm4_moe", use_qk_norm=False, n_group=1, topk_group=1, n_shared_experts=2)
    weights = load_file(path / "model.safetensors")
    assert not any("q_norm" in name or "k_norm" in name for name in weights)
    assert weights["model.layers.1.mlp.shared_experts.gate_proj.weight"].shape == (128, 128)


def test_same_seed_gives_identical_files(tmp_path):
    first = build_tiny_model(tmp_path / "a", "glm4_moe", seed=3)
    second = build_tiny_model(tmp_path / "b", "glm4_moe", seed=3)
    for name in ("config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("preset, low, high", [("glm4.5-air", 106e9, 107e9), ("glm4.5", 352e9, 353e9)])
def test_real_shape_presets_without_weights(preset, low, high):
    """Published as 106B (GLM-4.5-Air) and 355B (GLM-4.5) total; without the multi-token-prediction layer, which
    the presets leave out, these shapes count 106.9B and 352.8B."""
    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForCausalLM.from_config(make_config("glm4_moe", PRESETS[preset]))
                    .parameters())
    assert low < total < high


def test_bad_routing_shapes_are_rejected():
    with pytest.raises(ValueError, match="n_group"):
        make_config("glm4_moe", ModelShape(n_group=3))
