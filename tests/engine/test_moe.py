"""The sparse MoE block (temper/engine/models/moe.py) against Hugging Face's Qwen3-MoE block."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from temper.engine.models.moe import SparseMoeBlock, softmax_topk
from temper.engine.models.qwen3_moe import is_sparse_layer
from temper.engine.tp_group import TPGroup


def moe_config(**overrides):
    fields = dict(hidden_size=64, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=True)
    return AutoConfig.for_model("qwen3_moe", **{**fields, **overrides})


def block_pair(config, seed: int = 0) -> tuple[Qwen3MoeSparseMoeBlock, SparseMoeBlock]:
    """HF's block with random weights, and the engine's block loaded from its per-expert tensors."""
    g = torch.Generator().manual_seed(seed)
    hf = Qwen3MoeSparseMoeBlock(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    ours = SparseMoeBlock(config, TPGroup())
    size = config.moe_intermediate_size
    with torch.no_grad():
        ours.gate.weight.copy_(hf.gate.weight)
        for e, expert in enumerate(ours.experts):
            gate_up = hf.experts.gate_up_proj[e]
            for shard, rows in (("gate", gate_up[:size]), ("up", gate_up[size:])):
                weight = expert.gate_up_proj.weight
                weight.weight_loader(weight, rows, shard)
            expert.down_proj.weight.copy_(hf.experts.down_proj[e])
    return hf, ours


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_block_matches_hf(norm_topk_prob):
    hf, ours = block_pair(moe_config(norm_topk_prob=norm_topk_prob))
    x = torch.randn(37, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(x[None])[0]
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_router_matches_hf():
    hf, ours = block_pair(moe_config(norm_topk_prob=True))
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, hf_weights, hf_ids = hf.gate(x)
    weights, ids = softmax_topk(ours.gate(x), 3, renormalize=True)
    assert torch.equal(ids, hf_ids)
    torch.testing.assert_close(weights, hf_weights)
    torch.testing.assert_close(weights.sum(-1), torch.ones(20))


def test_only_the_experts_that_received_tokens_run():
    _, ours = block_pair(moe_config(num_experts_per_tok=2))
    calls = []
    for e, expert in enumerate(ours.experts):
        expert.register_forward_hook(lambda module, args, out, e=e: calls.append((e, args[0].shape[0])))
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(3))
    _, ids = softmax_topk(ours.gate(x), 2, renormalize=True)
    ours(x)
    assert sorted(calls) == [(e, 1) for e in sorted(ids[0].tolist())]  # one token: its two experts, once each
    calls.clear()
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(4))
    ours(x)
    assert sum(n for _, n in calls) == 50 * 2 and len({e for e, _ in calls}) == len(calls)  # each expert once


def test_sparse_layers_follow_hf_rule():
    config = SimpleNamespace(num_experts=4, decoder_sparse_step=2, mlp_only_layers=[3])
    assert [is_sparse_layer(config, i) for i in range(6)] == [False, True, False, False, False, True]
    assert not is_sparse_layer(SimpleNamespace(num_experts=0, decoder_sparse_step=1, mlp_only_layers=[]), 0)


def test_tensor_parallel_size_must_divide_the_expert_size():
    with pytest.raises(ValueError, match="tensor_parallel_size=3 does not divide the model's moe_intermediate_size=32"):
        SparseMoeBlock(moe_config(), SimpleNamespace(size=3))
