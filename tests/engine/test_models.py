"""Engine model code vs. Hugging Face forward passes (fp32 logits), per architecture and RoPE type."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine
from temper.engine.attention import AttentionMetadata
from temper.engine.models import model_class
from temper.engine.models.rotary import inverse_frequencies, rope_parameters


@torch.inference_mode()
def engine_logits(engine: LLMEngine, tokens: list[int]) -> torch.Tensor:
    """All-position logits of one sequence through the engine's model (a prefill without cache hits)."""
    runner = engine.model_runner
    n = len(tokens)
    table = list(range(-(-n // runner.block_size)))
    meta = AttentionMetadata(
        is_prefill=True, slot_mapping=torch.arange(n), block_tables=torch.tensor([table]),
        context_lens=torch.tensor([n]), query_lens=[n], cached_lens=[0], block_size=runner.block_size,
        backend=runner.attention_backend,
    )
    meta.backend.prepare(meta)
    hidden = runner.model(torch.tensor(tokens), torch.arange(n), meta)
    return runner.model.compute_logits(hidden).float()


def assert_matches_hf(path, num_tokens=150):
    tokens = torch.randint(0, 1000, (num_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    engine = LLMEngine(EngineArgs(model=str(path), num_kv_blocks=64, max_model_len=256))
    ours = engine_logits(engine, tokens)
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_logits_match_hf(arch, model_dir):
    assert_matches_hf(model_dir(arch))


def test_untied_lm_head_matches_hf(model_dir):
    assert_matches_hf(model_dir("qwen3", tie_word_embeddings=False))


def _patched_copy(src, dst, **fields):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(fields)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_llama3_rope_scaling_matches_hf(model_dir, tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 1_000_000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    path = _patched_copy(model_dir("llama"), tmp_path / "llama3", rope_parameters=rope, rope_scaling=rope)
    assert rope_parameters(AutoConfig.from_pretrained(path))["rope_type"] == "llama3"
    assert_matches_hf(path, num_tokens=200)


def test_attention_and_mlp_biases_match_hf(model_dir, tmp_path):
    """Llama with attention_bias and mlp_bias (the flags exist but no tiny preset uses them)."""
    src = model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    config = model.config
    config.attention_bias = config.mlp_bias = True
    biased = AutoModelForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        state = model.state_dict()
        for name, p in biased.named_parameters():
            p.copy_(state[name] if name in state else 0.1 * torch.randn(p.shape, generator=g))
    biased.save_pretrained(tmp_path)
    for f in src.glob("tokenizer*"):
        shutil.copy(f, tmp_path)
    assert_matches_hf(tmp_path)


def test_rope_parameters_read_both_config_layouts():
    v5 = SimpleNamespace(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    v4 = SimpleNamespace(rope_theta=5e5, rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    plain = SimpleNamespace(rope_theta=1e4, rope_scaling=None)
    assert rope_parameters(v5)["rope_type"] == rope_parameters(v4)["rope_type"] == "llama3"
    assert torch.equal(inverse_frequencies(rope_parameters(v5), 64, 131072),
                       inverse_frequencies(rope_parameters(v4), 64, 131072))
    assert rope_parameters(plain) == {"rope_theta": 1e4, "rope_type": "default"}
    with pytest.raises(NotImplementedError, match="yarn"):
        inverse_frequencies({"rope_type": "yarn", "rope_theta": 1e4}, 64, 4096)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="MistralForCausalLM.*supported"):
        model_class(SimpleNamespace(architectures=["MistralForCausalLM"]))
