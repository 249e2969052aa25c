"""GLM4's pieces (temper/engine/models/glm4.py): partial interleaved RoPE and the fused gate-up loader."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig
from transformers.models.glm4.modeling_glm4 import Glm4RotaryEmbedding, apply_rotary_pos_emb

from temper.engine.models.glm4 import FusedGateUp, Glm4ForCausalLM, partial_rotary_factor
from temper.engine.tp_group import TPGroup
from temper.engine.weights import WeightMap


@pytest.mark.parametrize("factor", [0.5, 1.0])
def test_rotary_matches_hf(factor):
    config = AutoConfig.for_model("glm4", hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                  rope_theta=10_000.0, partial_rotary_factor=factor, max_position_embeddings=512)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(9, 4, 32, generator=g), torch.randn(9, 2, 32, generator=g)
    positions = torch.tensor([0, 1, 2, 7, 100, 101, 300, 5, 511])
    cos, sin = Glm4RotaryEmbedding(config)(q, positions[None])
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    ours_q, ours_k = Glm4ForCausalLM.build_rotary(config, 512)(positions, q, k)
    torch.testing.assert_close(ours_q, hf_q[0].transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_k, hf_k[0].transpose(0, 1), rtol=0, atol=1e-6)
    if factor < 1:
        assert torch.equal(ours_q[..., 16:], q[..., 16:])  # the unrotated half passes through


def test_partial_rotary_factor_from_either_config_layout():
    v5 = SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25})
    v4 = SimpleNamespace(rope_theta=1e4, rope_scaling=None, partial_rotary_factor=0.25)
    assert partial_rotary_factor(v5) == partial_rotary_factor(v4) == 0.25
    assert partial_rotary_factor(SimpleNamespace(rope_theta=1e4)) == 0.5  # GLM's default


def test_fused_gate_up_loads_the_hf_tensor_and_the_shards():
    layer = FusedGateUp(8, 3, TPGroup())
    weight = layer.weight
    fused = torch.arange(6 * 8, dtype=torch.float32).view(6, 8)
    weight.weight_loader(weight, fused, None)
    assert torch.equal(weight.shard_view(weight, None), fused)
    assert torch.equal(weight.shard_view(weight, "up"), fused[3:])
    weight.weight_loader(weight, torch.zeros(3, 8), "gate")
    assert torch.equal(weight.data[:3], torch.zeros(3, 8)) and torch.equal(weight.data[3:], fused[3:])
    with pytest.raises(ValueError, match=r"expected shape \(6, 8\), got \(5, 8\)"):
        weight.weight_loader(weight, torch.zeros(5, 8), None)


def test_weight_names_are_hf_names():
    config = AutoConfig.for_model("glm4", vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=None)
    names = WeightMap(Glm4ForCausalLM(config, 16)).hf_names()
    layer = sorted(n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0."))
    assert layer == sorted([
        "input_layernorm.weight", "post_self_attn_layernorm.weight", "post_attention_layernorm.weight",
        "post_mlp_layernorm.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight", "self_attn.o_proj.weight",
        *(f"self_attn.{p}_proj.{kind}" for p in "qkv" for kind in ("weight", "bias")),
    ])
