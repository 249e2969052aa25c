"""The sparse MoE block (temper/engine/models/moe.py) against Hugging Face's Qwen3-MoE block, and its two
dispatch paths (the per-expert loop and the grouped GEMMs) against each other on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from temper.engine import kernels
from temper.engine.models import moe
from temper.engine.models.moe import SparseMoeBlock, dispatch_grouped, dispatch_loop, softmax_topk
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
    gate_up, down = ours.experts.gate_up_proj.weight, ours.experts.down_proj.weight
    with torch.no_grad():
        ours.gate.weight.copy_(hf.gate.weight)
        for e in range(config.num_experts):  # per expert and shard, as the checkpoint's names arrive
            rows = hf.experts.gate_up_proj[e]
            gate_up.weight_loader(gate_up, rows[:size], (e, "gate"))
            gate_up.weight_loader(gate_up, rows[size:], (e, "up"))
            down.weight_loader(down, hf.experts.down_proj[e], (e, None))
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


def test_bf16_router_is_hfs_and_the_float32_one_is_the_trainers():
    """In bf16: the engine's default route is HF's router bit for bit; with EngineArgs.moe_router_dtype
    "float32" it is the trainer's --moe-router-dtype fp32 router (`moe_routing.fp32_softmax_router`), which
    picks other experts for some tokens (near-ties that bf16 logits round apart)."""
    from temper.train.moe_routing import fp32_softmax_router

    config = moe_config(num_experts=64, num_experts_per_tok=8)
    hf, ours = block_pair(config)
    hf, ours = hf.bfloat16(), ours.bfloat16()
    fp32 = SparseMoeBlock(moe_config(num_experts=64, num_experts_per_tok=8, temper_moe_router_dtype="float32"),
                          TPGroup()).bfloat16()
    fp32.gate.weight.data.copy_(ours.gate.weight)
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(3)).bfloat16()
    with torch.no_grad():
        _, hf_weights, hf_ids = hf.gate(x)
        weights, ids = ours.route(x)
        assert torch.equal(ids, hf_ids) and torch.equal(weights, hf_weights) and weights.dtype == torch.bfloat16
        trainer_logits, trainer_weights, trainer_ids = fp32_softmax_router(hf.gate, x)
        weights, ids = fp32.route(x)
    assert torch.equal(ids, trainer_ids) and torch.equal(weights, trainer_weights) and weights.dtype == torch.float32
    assert not torch.equal(ids.sort(-1).values, hf_ids.sort(-1).values)  # the two routers differ on this batch


def test_the_loop_runs_only_the_experts_that_received_tokens(monkeypatch):
    _, ours = block_pair(moe_config(num_experts_per_tok=2))
    calls = []
    swiglu = moe.expert_swiglu

    def counted(x, w_gate_up, w_down):
        expert = next(e for e in range(8) if w_gate_up.data_ptr() == ours.experts.gate_up_proj.weight[e].data_ptr())
        calls.append((expert, x.shape[0]))
        return swiglu(x, w_gate_up, w_down)

    monkeypatch.setattr(moe, "expert_swiglu", counted)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(3))
    _, ids = softmax_topk(ours.gate(x), 2, renormalize=True)
    ours(x)
    assert sorted(calls) == [(e, 1) for e in sorted(ids[0].tolist())]  # one token: its two experts, once each
    calls.clear()
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(4))
    ours(x)
    assert sum(n for _, n in calls) == 50 * 2 and len({e for e, _ in calls}) == len(calls)  # each expert once


needs_grouped_mm = pytest.mark.skipif(not kernels.grouped_mm_runs_on_cpu(),
                                      reason="this PyTorch has no CPU torch._grouped_mm")


def random_routing(tokens: int, num_experts: int, top_k: int, seed: int, unused: int = 0):
    """Distinct top_k experts per token, never one of the last `unused` experts; float32 weights."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(tokens, num_experts, generator=g)
    scores[:, num_experts - unused:] = -1.0
    weights, ids = scores.topk(top_k, dim=-1)
    return weights, ids


@needs_grouped_mm
@pytest.mark.parametrize("tokens, top_k, unused", [(37, 3, 2), (1, 2, 0), (5, 1, 6), (64, 8, 0)])
def test_grouped_dispatch_equals_the_loop_in_fp32(tokens, top_k, unused):
    g = torch.Generator().manual_seed(tokens)
    num_experts, hidden, size = 8, 64, 32
    w_gate_up = torch.randn(num_experts, 2 * size, hidden, generator=g) / hidden**0.5
    w_down = torch.randn(num_experts, hidden, size, generator=g) / size**0.5
    x = torch.randn(tokens, hidden, generator=g)
    weights, ids = random_routing(tokens, num_experts, top_k, seed=tokens, unused=unused)
    torch.testing.assert_close(dispatch_grouped(w_gate_up, w_down, x, weights, ids),
                               dispatch_loop(w_gate_up, w_down, x, weights, ids), rtol=1e-5, atol=1e-6)


@needs_grouped_mm
def test_grouped_dispatch_in_bf16_rounds_as_the_loop():
    g = torch.Generator().manual_seed(0)
    w_gate_up = (torch.randn(8, 64, 64, generator=g) / 8).bfloat16()
    w_down = (torch.randn(8, 64, 32, generator=g) / 6).bfloat16()
    x = torch.randn(40, 64, generator=g).bfloat16()
    weights, ids = random_routing(40, 8, 2, seed=1)
    out = dispatch_grouped(w_gate_up, w_down, x, weights.bfloat16(), ids)
    ref = dispatch_loop(w_gate_up, w_down, x, weights.bfloat16(), ids)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


@needs_grouped_mm
@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_block_on_the_grouped_path_matches_hf(norm_topk_prob, monkeypatch):
    hf, ours = block_pair(moe_config(norm_topk_prob=norm_topk_prob))
    x = torch.randn(37, 64, generator=torch.Generator().manual_seed(1))
    grouped = []
    monkeypatch.setattr(moe, "dispatch_grouped", lambda *a: grouped.append(1) or dispatch_grouped(*a))
    kernels.set_enabled({"moe"})
    try:
        out = ours(x)
    finally:
        kernels.set_enabled(set())
    assert grouped
    with torch.no_grad():
        torch.testing.assert_close(out, hf(x[None])[0], rtol=1e-5, atol=1e-6)


def test_unaligned_expert_sizes_take_the_loop(monkeypatch):
    """torch._grouped_mm needs 16-byte aligned rows: an expert size of 6 float32 columns runs the loop."""
    _, ours = block_pair(moe_config(moe_intermediate_size=6))
    monkeypatch.setattr(moe, "dispatch_grouped", lambda *a: pytest.fail("grouped path taken"))
    kernels.set_enabled({"moe"})
    try:
        ours(torch.randn(4, 64))
    finally:
        kernels.set_enabled(set())


def test_expert_weights_name_the_expert_and_shard():
    _, ours = block_pair(moe_config())
    gate_up = ours.experts.gate_up_proj.weight
    with pytest.raises(ValueError, match="expert 8 out of range: the model has 8 experts"):
        gate_up.weight_loader(gate_up, torch.zeros(32, 64), (8, "gate"))
    with pytest.raises(ValueError, match=r"shard ids \(expert, one of \['gate', 'up'\]\); got 'gate'"):
        gate_up.weight_loader(gate_up, torch.zeros(32, 64), "gate")
    with pytest.raises(ValueError, match=r"expected shape \(32, 64\), got \(64, 64\)"):
        gate_up.weight_loader(gate_up, torch.zeros(64, 64), (0, "up"))


def test_sparse_layers_follow_hf_rule():
    config = SimpleNamespace(num_experts=4, decoder_sparse_step=2, mlp_only_layers=[3])
    assert [is_sparse_layer(config, i) for i in range(6)] == [False, True, False, False, False, True]
    assert not is_sparse_layer(SimpleNamespace(num_experts=0, decoder_sparse_step=1, mlp_only_layers=[]), 0)


def test_tensor_parallel_size_must_divide_the_expert_size():
    with pytest.raises(ValueError, match="tensor_parallel_size=3 does not divide the model's moe_intermediate_size=32"):
        SparseMoeBlock(moe_config(), SimpleNamespace(size=3))


@needs_grouped_mm
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3", "glm4_moe"])
def test_engine_on_the_grouped_path_decodes_as_hf(arch, model_dir, hf, monkeypatch):
    """The tiny Qwen3-MoE, DeepSeek-V3 and GLM-4.5 engines (fp32, CPU) with the grouped experts: HF's greedy tokens,
    prefix-cache hits included, and HF's log-probs."""
    from engine_helpers import NEW_TOKENS, check_greedy, engine_for

    path = model_dir(arch)
    engine = engine_for(path)
    calls = []
    monkeypatch.setattr(moe, "dispatch_grouped", lambda *a: calls.append(1) or dispatch_grouped(*a))
    monkeypatch.setattr(moe, "dispatch_loop", lambda *a: pytest.fail("the loop ran"))
    kernels.set_enabled({"moe"})
    try:
        prompts = hf.prompts(6, 3, 50, seed=3)
        prompts += [prompts[4] + [7, 8, 9]]  # its prompt's blocks are cached
        outs = check_greedy(engine, path, prompts, hf)
    finally:
        kernels.set_enabled(set())
    assert calls and outs[-1].cached_tokens > 0
    for prompt, out in zip(prompts, outs):
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), 0.0)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4
    assert len(outs[0].output_token_ids) == NEW_TOKENS
