"""GLM-4.5 (temper/engine/models/glm4_moe.py) against Hugging Face on CPU, fp32, tiny spread checkpoints: its
half-split partial RoPE, all-position logits (q/k norm on and off), greedy tokens (with and without prefix-cache
hits, under preemption, over two tensor-parallel ranks), log-probs of sampled tokens, the multi-token-prediction
layer skipped and a weight update in the trainer's names."""

from __future__ import annotations

import shutil

import pytest
import torch
from engine_helpers import (
    check_greedy,
    check_mtp_layer_skipped,
    check_n_sample_logprobs,
    check_prefix_cache_hits,
    check_two_tensor_parallel_ranks,
    check_update_in_trainer_names,
    engine_for,
)
from test_models import assert_matches_hf
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeRotaryEmbedding, apply_rotary_pos_emb

from temper.engine.models.glm4_moe import Glm4MoeForCausalLM

# GLM-4.5-Air's kind: no q/k norm, two dense layers then one sparse, an untied head, one expert group,
# unnormalised weights, two shared experts, unscaled routed weights.
VARIANT = dict(use_qk_norm=False, num_layers=3, first_k_dense_replace=2, tie_word_embeddings=False, n_group=1,
               topk_group=1, norm_topk_prob=False, n_shared_experts=2, routed_scaling_factor=1.0)


@pytest.fixture(scope="module")
def biased(model_dir, tmp_path_factory):
    """The spread checkpoint with a random, large e_score_correction_bias (HF builds the buffer as zeros), so that
    it changes which experts are chosen."""
    out = tmp_path_factory.mktemp("glm4_moe") / "biased"
    shutil.copytree(model_dir("glm4_moe"), out)
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(7)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.5 * torch.randn(buffer.shape, generator=g))
    model.save_pretrained(out)
    return out


def test_partial_rotary_is_hfs_half_split_layout():
    config = AutoConfig.for_model("glm4_moe", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=32, max_position_embeddings=512)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(9, 4, 32, generator=g), torch.randn(9, 2, 32, generator=g)
    positions = torch.tensor([0, 1, 2, 7, 100, 101, 300, 5, 511])
    cos, sin = Glm4MoeRotaryEmbedding(config)(q, positions[None])
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    ours_q, ours_k = Glm4MoeForCausalLM.build_rotary(config, 512)(positions, q, k)
    torch.testing.assert_close(ours_q, hf_q[0].transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_k, hf_k[0].transpose(0, 1), rtol=0, atol=1e-6)
    assert torch.equal(ours_q[..., 16:], q[..., 16:])  # partial_rotary_factor 0.5: the second half passes through


@pytest.mark.parametrize("overrides", [{}, VARIANT], ids=["default", "air-like"])
def test_logits_match_hf(overrides, model_dir):
    assert_matches_hf(model_dir("glm4_moe", **overrides))


def test_logits_match_hf_with_correction_bias(biased):
    assert_matches_hf(biased)


@pytest.mark.parametrize("prefix_caching", [False, True], ids=["no-cache", "prefix-cache"])
def test_greedy_matches_hf(prefix_caching, biased, hf, prompts):
    """The shared prompt set in one batch of mixed lengths, a shared 40-token prefix and copies of one prompt."""
    engine = engine_for(biased, enable_prefix_caching=prefix_caching)
    outs = check_greedy(engine, biased, prompts, hf)
    if prefix_caching:
        check_prefix_cache_hits(engine, outs, prompts)


def test_greedy_of_the_variant_under_preemption_matches_hf(model_dir, hf, prompts):
    path = model_dir("glm4_moe", **VARIANT)
    engine = engine_for(path, num_kv_blocks=8, max_model_len=96)
    check_greedy(engine, path, prompts[:16], hf)
    assert engine.stats()["num_preemptions"] > 0


def test_logprobs_of_n_samples_match_hf_forward(biased, hf, prompts):
    """n=4 samples of a 40+-token prompt: the first prefills it, the other three read its cached K/V."""
    check_n_sample_logprobs(biased, prompts, hf, 0.7)


def test_weight_update_in_the_trainers_names_reaches_the_engine(biased):
    """`engine_helpers.check_update_in_trainer_names`, as for DeepSeek-V3."""
    check_update_in_trainer_names(biased)


def test_multi_token_prediction_layer_is_skipped(biased, tmp_path, hf):
    """GLM-4.5 stores its MTP module as one more layer (model.layers.{num_hidden_layers}.*), as DeepSeek-V3 does."""
    check_mtp_layer_skipped(biased, tmp_path, hf, ("model.layers.2.self_attn.q_proj.weight", (128, 128)),
                            "model.layers.1.self_attn.qkv.weight")


def test_two_tensor_parallel_ranks_match_hf(biased, model_dir, hf):
    """Heads split over two ranks (q/k/v biases and all), the router replicated, every expert's and the shared
    experts' intermediate size split; greedy as HF's with a prefix-cache hit; weights loaded from full tensors
    and read back whole."""
    check_two_tensor_parallel_ranks(biased, model_dir("glm4_moe", seed=1), hf, (
        "model.layers.0.self_attn.k_proj.bias", "model.layers.1.self_attn.q_norm.weight",
        "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.experts.3.up_proj.weight",
        "model.layers.1.mlp.shared_experts.down_proj.weight"), variant_prompts=1)
