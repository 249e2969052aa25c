"""DeepSeek-V3 (temper/engine/models/deepseek_v3.py) against Hugging Face on CPU, fp32, tiny spread
checkpoints: the routing alone, all-position logits (YaRN RoPE too), greedy tokens (with and without
prefix-cache hits, under preemption, a batch of mixed lengths, over two tensor-parallel ranks), log-probs of
sampled tokens; the latent KV cache; the multi-token-prediction layer skipped; a weight update in the
trainer's names."""

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
from test_models import _patched_copy, assert_matches_hf
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from temper.engine.models.deepseek_v3 import TopkRouter

# No q LoRA (Moonlight), two dense layers then one sparse, the non-interleaved RoPE layout, an untied head,
# two groups of which one is kept, unnormalised weights, two shared experts.
VARIANT = dict(q_lora_rank=None, num_layers=3, first_k_dense_replace=2, rope_interleave=False,
               tie_word_embeddings=False, n_group=2, topk_group=1, norm_topk_prob=False, n_shared_experts=2)


@pytest.fixture(scope="module")
def biased(model_dir, tmp_path_factory):
    """A spread checkpoint whose routers' e_score_correction_bias (a buffer: HF builds it as zeros and the
    spread draw leaves it so) is random and large enough to change which experts are chosen."""
    out = tmp_path_factory.mktemp("deepseek") / "biased"
    shutil.copytree(model_dir("deepseek_v3"), out)  # tokenizer files too
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(7)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.5 * torch.randn(buffer.shape, generator=g))
    model.save_pretrained(out)
    return out


def router_pair(seed: int, n_group: int = 4, topk_group: int = 2, **fields):
    config = AutoConfig.for_model("deepseek_v3", hidden_size=64, n_routed_experts=16, num_experts_per_tok=4,
                                  n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5, **fields)
    g = torch.Generator().manual_seed(seed)
    hf = DeepseekV3TopkRouter(config)
    ours = TopkRouter(config)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(hf.weight.shape, generator=g) / 8)
        hf.e_score_correction_bias.copy_(0.3 * torch.randn(16, generator=g))
        ours.weight.copy_(hf.weight)
        ours.e_score_correction_bias.copy_(hf.e_score_correction_bias)
    return hf, ours


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("n_group,topk_group", [(4, 2), (8, 2), (1, 1), (4, 4)],
                         ids=["2-of-4-groups", "2-of-8", "one-group", "all-groups-kept"])
def test_grouped_routing_matches_hf(norm_topk_prob, n_group, topk_group):
    """Moonlight's one group (and any topk_group == n_group) skips the group mask; the picks stay HF's."""
    hf, ours = router_pair(0, n_group, topk_group, norm_topk_prob=norm_topk_prob)
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    _, hf_weights, hf_ids = hf(x)
    weights, ids = ours(x)
    order, hf_order = ids.sort(-1)[1], hf_ids.sort(-1)[1]
    assert torch.equal(ids.gather(1, order), hf_ids.gather(1, hf_order))
    torch.testing.assert_close(weights.gather(1, order), hf_weights.gather(1, hf_order))
    groups = ids // (16 // n_group)  # every token's experts lie in at most topk_group groups
    assert all(len(set(row)) <= topk_group for row in groups.tolist())
    if topk_group < n_group:  # the mask changed some token's picks from the ungrouped top-k
        ungrouped = (x @ ours.weight.T).sigmoid().add(ours.e_score_correction_bias).topk(4, dim=-1)[1]
        assert not torch.equal(ungrouped.sort(-1)[0], ids.sort(-1)[0])


def test_correction_bias_chooses_but_does_not_weigh():
    _, ours = router_pair(0, norm_topk_prob=False)
    x = torch.randn(30, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours.e_score_correction_bias.zero_()
        ours.e_score_correction_bias[5] = 10.0  # expert 5 always chosen, weighted by its own score
    weights, ids = ours(x)
    assert bool((ids == 5).any(-1).all())
    score = torch.sigmoid(x @ ours.weight[5])
    torch.testing.assert_close(weights[ids == 5], 2.5 * score)


@pytest.mark.parametrize("overrides", [{}, VARIANT], ids=["default", "variant"])
def test_logits_match_hf(overrides, model_dir):
    assert_matches_hf(model_dir("deepseek_v3", **overrides))


@pytest.mark.parametrize("mscale_all_dim", [1.0, 0.5], ids=["deepseek-v3", "cos-sin-factor"])
def test_yarn_rope_matches_hf(mscale_all_dim, model_dir, tmp_path):
    """DeepSeek-V3's YaRN (factor 40 in its config; here 8 over 32 original positions, so that 200 tokens
    reach past them): its frequencies, the softmax scale mscale(factor, mscale_all_dim)^2 and, when mscale
    differs from mscale_all_dim, the factor on cos/sin."""
    rope = {"rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 8.0, "original_max_position_embeddings": 32,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": mscale_all_dim}
    path = _patched_copy(model_dir("deepseek_v3"), tmp_path / "yarn", rope_parameters=rope, rope_scaling=rope)
    assert AutoConfig.from_pretrained(path).rope_parameters["rope_type"] == "yarn"
    assert_matches_hf(path, num_tokens=200)


def test_logits_match_hf_with_correction_bias(biased):
    assert_matches_hf(biased)


def test_kv_cache_holds_the_latent(biased):
    """One tensor per layer of kv_lora_rank + qk_rope_head_dim values a token (not per-head K and V)."""
    engine = engine_for(biased, num_kv_blocks=32)
    runner = engine.model_runner
    config = AutoConfig.from_pretrained(biased)
    entry = config.kv_lora_rank + config.qk_rope_head_dim
    assert tuple(runner.kv_cache.shape) == (1, config.num_hidden_layers, 32, runner.block_size, 1, entry)
    routing = config.num_hidden_layers * config.num_experts_per_tok * 2  # int16 routed experts beside it (R3)
    assert runner.block_bytes() == runner.block_size * (config.num_hidden_layers * entry * 4 + routing)
    attn = runner.model.model.layers[1].self_attn.attn
    assert attn.k_cache is attn.v_cache or attn.k_cache.data_ptr() == attn.v_cache.data_ptr()


@pytest.mark.parametrize("prefix_caching", [False, True], ids=["no-cache", "prefix-cache"])
def test_greedy_matches_hf(prefix_caching, biased, hf, prompts):
    """The shared prompt set in one batch of mixed lengths (3..60 tokens), with a shared 40-token prefix and
    copies of one prompt that hit the prefix cache when it is on."""
    path = biased
    engine = engine_for(path, enable_prefix_caching=prefix_caching)
    outs = check_greedy(engine, path, prompts, hf)
    if prefix_caching:
        check_prefix_cache_hits(engine, outs, prompts)
    else:
        assert engine.stats()["prefill_tokens_computed"] == sum(map(len, prompts))


def test_greedy_of_the_variant_matches_hf(model_dir, hf, prompts):
    path = model_dir("deepseek_v3", **VARIANT)
    check_greedy(engine_for(path), path, prompts[14:24], hf)


def test_greedy_under_preemption_matches_hf(biased, hf, prompts):
    path = biased
    engine = engine_for(path, num_kv_blocks=8, max_model_len=96)
    check_greedy(engine, path, prompts[:16], hf)
    assert engine.stats()["num_preemptions"] > 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_of_n_samples_match_hf_forward(temperature, biased, hf, prompts):
    """n=4 samples of a 40+-token prompt: the first prefills it, the other three read its cached latents."""
    check_n_sample_logprobs(biased, prompts, hf, temperature)


def test_weight_update_in_the_trainers_names_reaches_the_engine(biased):
    """`engine_helpers.check_update_in_trainer_names`: every parameter changed in the trainer's layout and names
    reaches the engine; e_score_correction_bias, a buffer, stays the engine's own."""
    check_update_in_trainer_names(biased)


def test_multi_token_prediction_layer_is_skipped(biased, tmp_path, hf):
    """DeepSeek-V3 stores its MTP module as one more layer (model.layers.{num_hidden_layers}.*); the engine
    does not serve it and loads the rest, from disk or by name, while an unknown name is still an error."""
    check_mtp_layer_skipped(biased, tmp_path, hf, ("model.layers.2.self_attn.kv_a_proj_with_mqa.weight", (48, 128)),
                            "model.layers.1.self_attn.kv_proj.weight")


def test_two_tensor_parallel_ranks_match_hf(biased, model_dir, hf):
    """Heads split over two ranks (q_b, kv_b column-parallel, o_proj row-parallel), the latent projections,
    router and cache entry replicated, every expert's intermediate size split; greedy as HF's with a
    prefix-cache hit, weights loaded from full tensors and read back whole."""
    check_two_tensor_parallel_ranks(biased, model_dir("deepseek_v3", seed=1), hf, (
        "model.layers.0.self_attn.kv_b_proj.weight", "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.experts.3.up_proj.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
        "model.layers.1.mlp.shared_experts.down_proj.weight"), variant_prompts=2)
