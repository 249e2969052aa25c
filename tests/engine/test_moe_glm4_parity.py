"""Qwen3-MoE and GLM4 in the engine against Hugging Face (CPU, fp32, tiny spread checkpoints): all-position
logits, greedy tokens (with and without prefix-cache hits, under preemption), and the log-probs of
sampled tokens, n samples of one prompt sharing its cached prefix."""

from __future__ import annotations

import pytest
from engine_helpers import check_greedy, check_n_sample_logprobs, check_prefix_cache_hits, engine_for
from test_models import assert_matches_hf

ARCHS = ["qwen3_moe", "glm4"]
# Qwen3-MoE with dense layers between sparse ones: layer 1 is in mlp_only_layers, layers 0, 2 have experts.
MIXED_MOE = dict(num_layers=3, mlp_only_layers=(1,), num_experts_per_tok=3, norm_topk_prob=False)


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("qwen3_moe", {}),
        ("qwen3_moe", MIXED_MOE),
        ("qwen3_moe", dict(num_layers=4, decoder_sparse_step=2, tie_word_embeddings=False)),
        ("glm4", {}),
        ("glm4", dict(tie_word_embeddings=False, partial_rotary_factor=1.0)),
    ],
    ids=["qwen3_moe", "qwen3_moe-mixed", "qwen3_moe-step2-untied", "glm4", "glm4-untied-full-rope"],
)
def test_logits_match_hf(arch, overrides, model_dir):
    assert_matches_hf(model_dir(arch, **overrides))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_hf(arch, model_dir, hf, prompts):
    path = model_dir(arch)
    engine = engine_for(path, enable_prefix_caching=False)
    check_greedy(engine, path, prompts, hf)
    assert engine.stats()["prefill_tokens_computed"] == sum(map(len, prompts))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_prefix_cache_hits_matches_hf(arch, model_dir, hf, prompts):
    path = model_dir(arch)
    engine = engine_for(path)
    check_prefix_cache_hits(engine, check_greedy(engine, path, prompts, hf), prompts)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_under_preemption_matches_hf(arch, model_dir, hf, prompts):
    path = model_dir(arch)
    engine = engine_for(path, num_kv_blocks=8, max_model_len=96)
    check_greedy(engine, path, prompts[:16], hf)
    assert engine.stats()["num_preemptions"] > 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("arch, overrides", [("qwen3_moe", MIXED_MOE), ("glm4", {})], ids=ARCHS)
def test_logprobs_of_n_samples_match_hf_forward(arch, overrides, temperature, model_dir, hf, prompts):
    """n=4 samples of a 40+-token prompt: the first prefills it, the other three hit its cached blocks."""
    check_n_sample_logprobs(model_dir(arch, **overrides), prompts, hf, temperature)
