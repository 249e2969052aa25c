"""The tiny-model factory's qwen3_moe and glm4 archs: HF folders in the published checkpoints' layout that
load, generate and are reproducible, and the real-shape presets (built without weights)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from temper.testing.tiny_models import PRESETS, build_tiny_model, make_config, resolve_shape, tiny_model_dir
from temper.testing.tokenizer import special_token_ids

ARCHS = {"qwen3_moe": "Qwen3MoeForCausalLM", "glm4": "Glm4ForCausalLM"}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_loads_and_generates(arch):
    path = tiny_model_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == ARCHS[arch] and model.config.pad_token_id is None
    assert (model.config.bos_token_id, model.config.eos_token_id) == (
        special_token_ids()["<|endoftext|>"], special_token_ids()["<|im_end|>"])
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 and int(out.max()) < model.config.vocab_size


def test_qwen3_moe_config_and_per_expert_checkpoint_names():
    path = tiny_model_dir("qwen3_moe")
    config = AutoConfig.from_pretrained(path)
    assert (config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size) == (8, 2, 64)
    assert config.norm_topk_prob and config.decoder_sparse_step == 1 and config.mlp_only_layers == []
    weights = load_file(path / "model.safetensors")
    assert weights["model.layers.1.mlp.gate.weight"].shape == (8, 128)
    assert weights["model.layers.1.mlp.experts.7.gate_proj.weight"].shape == (64, 128)
    assert weights["model.layers.1.mlp.experts.7.down_proj.weight"].shape == (128, 64)


def test_qwen3_moe_dense_layers(tmp_path):
    path = build_tiny_model(tmp_path, "qwen3_moe", num_layers=4, decoder_sparse_step=2, mlp_only_layers=(3,))
    names = load_file(path / "model.safetensors").keys()
    sparse = sorted({int(n.split(".")[2]) for n in names if ".mlp.experts." in n})
    assert sparse == [1]  # layer 3 is mlp-only; 0 and 2 fall between sparse steps
    assert "model.layers.0.mlp.gate_proj.weight" in names and "model.layers.3.mlp.up_proj.weight" in names


def test_glm4_config_and_checkpoint_names():
    path = tiny_model_dir("glm4")
    config = AutoConfig.from_pretrained(path)
    assert config.rope_parameters["partial_rotary_factor"] == 0.5 and config.attention_bias
    raw = json.loads((path / "config.json").read_text())
    assert (raw["rope_theta"], raw["partial_rotary_factor"]) == (1_000_000.0, 0.5)  # top level, as published
    weights = load_file(path / "model.safetensors")
    assert weights["model.layers.0.mlp.gate_up_proj.weight"].shape == (2 * 256, 128)
    assert weights["model.layers.0.self_attn.q_proj.bias"].shape == (128,)
    assert "model.layers.0.self_attn.o_proj.bias" not in weights
    assert {"post_self_attn_layernorm", "post_mlp_layernorm"} <= {n.split(".")[3] for n in weights if ".layers.0." in n}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_same_seed_gives_identical_files(tmp_path, arch):
    first = build_tiny_model(tmp_path / "a", arch, seed=3)
    second = build_tiny_model(tmp_path / "b", arch, seed=3)
    for name in ("config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_real_shape_presets_without_weights():
    moe = make_config("qwen3_moe", PRESETS["qwen3-30b-a3b"])
    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForCausalLM.from_config(moe).parameters())
    assert 30.4e9 < total < 30.6e9  # Qwen3-30B-A3B: 30.5B parameters
    glm = make_config("glm4", PRESETS["glm4-9b"])
    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForCausalLM.from_config(glm).parameters())
    assert 9.3e9 < total < 9.5e9  # GLM-4-9B-0414: 9.4B parameters


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_experts_per_tok": 9}, "num_experts_per_tok"), ({"partial_rotary_factor": 0.3}, "partial_rotary_factor")],
)
def test_bad_moe_and_rotary_shapes_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_shape("tiny", **kwargs)
