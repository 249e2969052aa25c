"""Tiny checkpoints: real HF folders that load, generate, and are byte-for-byte reproducible."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from temper.testing.tiny_models import (
    PRESETS,
    ModelShape,
    build_tiny_model,
    main,
    make_config,
    resolve_shape,
    tiny_model_dir,
)
from temper.testing.tokenizer import TOKENIZER_SIZE, special_token_ids

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
ARCH_CLASSES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def test_folder_has_hf_files(tiny_arch_dir):
    assert EXPECTED_FILES <= {p.name for p in tiny_arch_dir.iterdir()}
    tokenizer_config = json.loads((tiny_arch_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert json.loads((tiny_arch_dir / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"


@pytest.mark.parametrize("arch", sorted(ARCH_CLASSES))
def test_config_fields(arch):
    config = AutoConfig.from_pretrained(tiny_model_dir(arch))
    ids = special_token_ids()
    assert config.architectures == [ARCH_CLASSES[arch]]
    assert config.model_type == arch
    assert config.num_hidden_layers == 2 and config.hidden_size == 128
    assert config.num_attention_heads == 4 and config.num_key_value_heads == 2
    assert getattr(config, "head_dim", config.hidden_size // config.num_attention_heads) >= 32
    assert config.max_position_embeddings >= 2048
    assert config.tie_word_embeddings is True
    assert config.vocab_size >= TOKENIZER_SIZE
    assert (config.bos_token_id, config.eos_token_id) == (ids["<|endoftext|>"], ids["<|im_end|>"])
    assert config.pad_token_id is None  # as in Qwen: a pad id would freeze that embedding row
    raw = json.loads((tiny_model_dir(arch) / "config.json").read_text())
    assert raw["rope_theta"] == 1_000_000.0  # written on every transformers version


def test_loads_and_generates_a_batch(tiny_arch_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_arch_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_arch_dir, padding_side="left")
    assert type(model).__name__ == json.loads((tiny_arch_dir / "config.json").read_text())["architectures"][0]
    assert model.dtype == torch.float32
    assert len(tokenizer) == TOKENIZER_SIZE and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == [
        special_token_ids()["<|im_end|>"],
        special_token_ids()["<|endoftext|>"],
    ]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "12+7="}], tokenize=False, add_generation_prompt=True
        ),
        "The quick brown fox",
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    assert int(out.max()) < model.config.vocab_size


def test_forward_logits_shape_and_finite(tiny_arch_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_arch_dir)
    input_ids = torch.arange(10).reshape(2, 5)
    logits = model(input_ids=input_ids).logits
    assert logits.shape == (2, 5, model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", sorted(ARCH_CLASSES))
def test_same_seed_gives_identical_files(tmp_path, arch):
    first = build_tiny_model(tmp_path / "a", arch, seed=3)
    second = build_tiny_model(tmp_path / "b", arch, seed=3)
    for name in EXPECTED_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_different_seed_gives_different_weights(tmp_path):
    a = load_file(build_tiny_model(tmp_path / "a", seed=0) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=1) / "model.safetensors")
    assert a.keys() == b.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[name], b[name])


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_bf16_build_is_the_cast_of_fp32(tmp_path):
    fp32 = load_file(build_tiny_model(tmp_path / "fp32", "llama") / "model.safetensors")
    bf16 = load_file(build_tiny_model(tmp_path / "bf16", "llama", dtype=torch.bfloat16) / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in bf16.values())
    for name, tensor in fp32.items():
        assert torch.equal(bf16[name], tensor.to(torch.bfloat16)), name
    raw = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert raw.get("dtype", raw.get("torch_dtype")) == "bfloat16"


def test_tie_word_embeddings_controls_lm_head(tmp_path):
    tied = load_file(build_tiny_model(tmp_path / "tied", "qwen2") / "model.safetensors")
    untied = load_file(build_tiny_model(tmp_path / "untied", "qwen2", tie_word_embeddings=False) / "model.safetensors")
    assert "lm_head.weight" not in tied
    assert untied["lm_head.weight"].shape == (1024, 128)


def test_overrides_reach_the_checkpoint(tmp_path):
    path = build_tiny_model(tmp_path, "qwen3", num_layers=3, hidden_size=96, head_dim=64, vocab_size=2048)
    config = AutoConfig.from_pretrained(path)
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim, config.vocab_size) == (3, 96, 64, 2048)
    weights = load_file(path / "model.safetensors")
    assert weights["model.layers.2.self_attn.q_proj.weight"].shape == (4 * 64, 96)


@pytest.mark.parametrize(
    ("preset", "layers", "h", "heads", "i", "tied", "published"),
    [
        ("qwen3-0.6b", 28, 1024, 16, 3072, True, (0.59e9, 0.60e9)),
        ("qwen3-1.7b", 28, 2048, 16, 6144, True, (1.7e9, 1.75e9)),
        ("qwen3-4b", 36, 2560, 32, 9728, True, (4.0e9, 4.05e9)),
        ("qwen3-8b", 36, 4096, 32, 12288, False, (8.1e9, 8.25e9)),
    ],
)
def test_qwen3_preset_shapes_without_weights(preset, layers, h, heads, i, tied, published):
    config = make_config("qwen3", PRESETS[preset])
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (layers, h, i)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (heads, 8, 128)
    assert config.vocab_size == 151936 and config.tie_word_embeddings == tied
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    q, kv = heads * 128, 8 * 128
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * 128 + 2 * h
    expected = 151936 * h * (1 if tied else 2) + layers * per_layer + h
    assert sum(p.numel() for p in model.parameters()) == expected
    assert published[0] < expected < published[1]  # the published size (Qwen3-0.6B, Qwen3-4B)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"vocab_size": 100}, ValueError, "vocab_size"),
        ({"num_kv_heads": 3}, ValueError, "multiple of num_kv_heads"),
        ({"head_dim": 16}, ValueError, "head_dim"),
        ({"num_layer": 2}, TypeError, "unknown ModelShape field"),
    ],
)
def test_bad_shapes_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        resolve_shape("tiny", **kwargs)


def test_bad_arch_and_preset_are_rejected():
    with pytest.raises(ValueError, match="unknown tiny-model arch"):
        make_config("gpt2")
    with pytest.raises(ValueError, match="unknown tiny-model preset"):
        resolve_shape("qwen3-7b")
    with pytest.raises(ValueError, match="num_heads \\* head_dim == hidden_size"):
        make_config("llama", ModelShape(hidden_size=96))


def test_tiny_model_dir_is_cached_per_arguments():
    assert tiny_model_dir("llama") == tiny_model_dir("llama")
    assert tiny_model_dir("llama", seed=1) != tiny_model_dir("llama")
    assert tiny_model_dir("llama", num_layers=1) != tiny_model_dir("llama")


def test_command_line_builds_a_checkpoint(tmp_path, capsys):
    path = main([str(tmp_path / "cli"), "--arch", "qwen2", "--seed", "5"])
    assert capsys.readouterr().out.strip() == str(path)
    assert EXPECTED_FILES <= {p.name for p in path.iterdir()}
    assert AutoConfig.from_pretrained(path).architectures == ["Qwen2ForCausalLM"]


def test_fixtures_share_the_cached_folders(tiny_qwen3_dir, tiny_model_factory):
    assert tiny_qwen3_dir == tiny_model_dir("qwen3") == tiny_model_factory("qwen3")
