"""The routers' top-k kernels (`kernels/routing.py`, kernel group "routing") vs their PyTorch references
(`deepseek_v3.grouped_topk`, `moe.softmax_topk`), on CPU through the interpreter; the self-check; the router
switch in `deepseek_v3.TopkRouter`; the tiny DeepSeek-V3 engine on the kernel.

What is exact and why: the expert ids per row, as sets (their order is the kernel's, descending choice value,
which callers do not depend on). The values that choose are computed by the same formulas (sigmoid = 1 / (1 +
exp(-x)) plus the bias; a group's score is the sum of its two best; softmax = exp(x - max) / sum) and differ
from the reference only by the exp implementation and the order of the softmax's sum: a few float32 ulps,
which changes no pick where no two candidates are that close -- random float32 logits, and bf16 logits
drawn as distinct values. The weights sum k values (and the softmax E) in another order, so they agree to
1e-6 relative in float32, and in bf16 to one bf16 ulp (equal but where the float32 values straddle a
rounding boundary). Ties are tested apart: the kernel keeps the lowest index. The GPU tests (`gpu` marker):
Moonlight's, DeepSeek-V3's and Qwen3-30B-A3B's router shapes, and a CUDA-graph capture."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from kernel_helpers import assert_group_keeps_greedy, ulp_close

pytest.importorskip("triton")

from temper.engine import kernels
from temper.engine.kernels import routing, self_check
from temper.engine.kernels.common import next_pow2
from temper.engine.kernels.self_check import passing_groups
from temper.engine.models import moe
from temper.engine.models.deepseek_v3 import TopkRouter, grouped_topk


def sigmoid_inputs(tokens, num_experts, device, seed=0):
    """float32 logits [T, E] and a choice bias [E] large enough to change picks."""
    g = torch.Generator().manual_seed(seed)
    logits, bias = 2 * torch.randn(tokens, num_experts, generator=g), 0.3 * torch.randn(num_experts, generator=g)
    return logits.to(device), bias.to(device)


def distinct_logits(tokens, num_experts, dtype, device, seed=0):
    """Rows of distinct values k * 8 / P (P: E's next power of two, |k| <= P / 2) in random order, exact in bf16
    (random bf16 logits tie often, and torch.topk's pick among ties is its own)."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(num_experts, generator=g) for _ in range(tokens)]) - num_experts // 2
    return (ranks * (8.0 / next_pow2(num_experts))).to(device=device, dtype=dtype)


def by_expert(out, ref):
    """Both (weights, ids) with each row sorted by expert id, after checking the ids are the same sets."""
    (weights, ids), (ref_weights, ref_ids) = out, ref
    assert ids.dtype == torch.int64 and ids.shape == ref_ids.shape and weights.dtype == ref_weights.dtype
    order, ref_order = ids.sort(dim=1)[1], ref_ids.sort(dim=1)[1]
    assert torch.equal(ids.gather(1, order), ref_ids.gather(1, ref_order))
    return weights.gather(1, order), ref_weights.gather(1, ref_order)


def assert_same_routing(out, ref):
    weights, ref_weights = by_expert(out, ref)
    if weights.dtype == torch.float32:
        torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=0.0)
    else:
        ulp_close(weights, ref_weights, max_ulps=1)


# (experts, groups, groups kept): DeepSeek-V3's routers split E into groups of at least 2
GROUPINGS = [(e, g, kg) for e in (8, 64, 128, 256) for g, kg in ((1, 1), (4, 2), (8, 4)) if e // g >= 2]


@pytest.mark.parametrize("top_k", [1, 2, 6, 8])
@pytest.mark.parametrize("num_experts, num_groups, topk_groups", GROUPINGS)
def test_sigmoid_topk_matches_grouped_topk(num_experts, num_groups, topk_groups, top_k, device):
    if top_k > topk_groups * (num_experts // num_groups):
        pytest.skip("fewer experts in the kept groups than top_k")
    for tokens in (1, 5, 64):
        logits, bias = sigmoid_inputs(tokens, num_experts, device, seed=tokens)
        for renormalize, scale in ((True, 2.5), (False, 1.0)):
            args = (top_k, num_groups, topk_groups, renormalize, scale)
            assert_same_routing(routing.sigmoid_topk(logits, bias, *args), grouped_topk(logits, bias, *args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 2, 6, 8])
@pytest.mark.parametrize("num_experts", [8, 64, 128, 256])
def test_softmax_topk_matches_moe_softmax_topk(num_experts, top_k, dtype, device):
    for tokens in (1, 5, 64):
        logits = (distinct_logits(tokens, num_experts, dtype, device, seed=tokens) if dtype == torch.bfloat16
                  else 2 * torch.randn(tokens, num_experts, generator=torch.Generator().manual_seed(tokens)).to(device))
        for renormalize in (True, False):
            assert_same_routing(routing.softmax_topk(logits, top_k, renormalize),
                                moe.softmax_topk(logits, top_k, renormalize))


def test_softmax_topk_out_dtype_and_strided_rows(device):
    """`out_dtype` rounds the float32 weights (the trainer's float32 logits, weights in the model's dtype);
    rows of a wider buffer (a stride over E) are read through their stride."""
    buffer = 2 * torch.randn(5, 80, generator=torch.Generator().manual_seed(3)).to(device)
    logits = buffer[:, :64]
    weights, ids = routing.softmax_topk(logits, 6, True, out_dtype=torch.bfloat16)
    ref_weights, ref_ids = moe.softmax_topk(logits, 6, True)
    assert_same_routing((weights, ids), (ref_weights.to(torch.bfloat16), ref_ids))


def test_ties_keep_the_lowest_index(device):
    """Equal values at the k-th place: the kernel keeps the lowest expert ids, and the values it keeps are
    the reference's top-k values (torch.topk may keep another of the tied ids)."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0, 3.0, -1.0, 1.0, 0.5]] * 2, device=device)
    bias = torch.zeros(8, device=device)
    weights, ids = routing.sigmoid_topk(logits, bias, 2, 1, 1, False, 1.0)
    assert ids.tolist() == [[1, 3]] * 2
    torch.testing.assert_close(weights, logits.sigmoid()[:, [1, 3]], rtol=1e-6, atol=0.0)
    weights, ids = routing.softmax_topk(logits, 4, False)
    assert ids.tolist() == [[1, 3, 4, 2]] * 2
    ref_weights, _ = moe.softmax_topk(logits, 4, False)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=0.0)


def test_group_mask_picks_from_the_best_groups_only(device):
    """4 groups of 2, keep 2: the best single expert (0) lies in a group whose two best sum lower than
    groups 1 and 2, so it is masked out and the picks come from group 1, as in HF."""
    scores = torch.tensor([[0.99, 0.01, 0.6, 0.6, 0.55, 0.55, 0.5, 0.5]], device=device)
    logits = torch.log(scores / (1 - scores))
    bias = torch.zeros(8, device=device)
    ref = grouped_topk(logits, bias, 2, 4, 2, True, 1.0)
    out = routing.sigmoid_topk(logits, bias, 2, 4, 2, True, 1.0)
    assert_same_routing(out, ref)
    assert sorted(out[1][0].tolist()) == [2, 3]


def test_no_tokens_and_rejected_shapes(device):
    logits, bias = sigmoid_inputs(0, 8, device)
    weights, ids = routing.sigmoid_topk(logits, bias, 2, 1, 1, True, 1.0)
    assert weights.shape == ids.shape == (0, 2)
    assert routing.softmax_topk(logits, 2, True)[1].shape == (0, 2)
    with pytest.raises(ValueError, match="at most 512"):
        routing.softmax_topk(torch.zeros(1, 1024, device=device), 2, True)
    with pytest.raises(ValueError, match="top_k=5"):
        routing.sigmoid_topk(*sigmoid_inputs(1, 8, device), 5, 4, 2, True, 1.0)  # 2 groups of 2 kept
    with pytest.raises(ValueError, match="float32"):
        routing.sigmoid_topk(logits.bfloat16(), bias, 2, 1, 1, True, 1.0)


# ---- the self-check and the switch ---------------------------------------------------------------------


def experts_shape(num_experts, top_k):
    return SimpleNamespace(experts=(num_experts, 64, 32, top_k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_experts, top_k", [(8, 2), (64, 6), (160, 8), (256, 8)])
def test_self_check_keeps_the_routing_kernels(num_experts, top_k, dtype, device):
    assert passing_groups(torch.device(device), dtype, experts_shape(num_experts, top_k), {"routing"}) == {"routing"}


def test_self_check_catches_a_wrong_routing_kernel(device, monkeypatch):
    shape = experts_shape(64, 6)
    real_sigmoid, real_softmax = routing.sigmoid_topk, routing.softmax_topk
    wrong = {
        "sigmoid weights": ("sigmoid_topk", lambda logits, bias, *args: (
            lambda w, i: (w * 1.01, i))(*real_sigmoid(logits, bias, *args))),
        "no group mask": ("sigmoid_topk", lambda logits, bias, k, groups, keep, *args: real_sigmoid(
            logits, bias, k, 1, 1, *args)),
        "biased weights": ("sigmoid_topk", lambda logits, bias, *args: (
            lambda w, i: (w + bias[i], i))(*real_sigmoid(logits, bias, *args))),
        "softmax not renormalised": ("softmax_topk", lambda logits, k, renormalize, *args: real_softmax(
            logits, k, False, *args)),
        "softmax picks": ("softmax_topk", lambda logits, k, *args: real_softmax(-logits, k, *args)),
    }
    for name, (function, broken) in wrong.items():
        with monkeypatch.context() as patch:
            patch.setattr(routing, function, broken)
            assert passing_groups(torch.device(device), torch.float32, shape, {"routing"}) == set(), name
    # more experts than a row of registers holds: the group is left off, not an error at the first step
    assert passing_groups(torch.device(device), torch.float32, experts_shape(1024, 8), {"routing"}) == set()


def test_routing_group_is_checked_for_models_with_experts_only(device):
    assert "routing" in kernels.TRITON_GROUPS and "routing" in kernels.MOE_GROUPS
    dense = SimpleNamespace(experts=None)
    assert "routing" not in self_check.enable("triton", torch.device(device), torch.float32, dense)
    assert "routing" in self_check.enable("triton", torch.device(device), torch.float32, experts_shape(8, 2))


def test_topk_router_takes_the_kernel_where_the_group_is_on(device, monkeypatch):
    config = SimpleNamespace(n_routed_experts=16, hidden_size=32, num_experts_per_tok=4, routed_scaling_factor=2.5,
                             n_group=4, topk_group=2, norm_topk_prob=True)
    router = TopkRouter(config).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.copy_(torch.randn(16, 32, generator=g) / 4)
        router.e_score_correction_bias.copy_(0.3 * torch.randn(16, generator=g))
    x = torch.randn(7, 32, generator=g).to(device)
    calls, real = [], routing.sigmoid_topk
    monkeypatch.setattr(routing, "sigmoid_topk", lambda *a: calls.append(1) or real(*a))
    reference = router(x)
    assert not calls
    kernels.set_enabled({"routing"})
    assert_same_routing(router(x), reference)
    assert calls == [1]


def test_deepseek_v3_engine_on_the_routing_kernel_generates_the_reference_tokens(model_dir, hf, monkeypatch, device):
    """The tiny DeepSeek-V3 (4 groups, 2 kept; float32) with a random choice bias, with only "routing" on vs
    all kernels off: the same greedy tokens (a prefix-cache hit included), log-probs to float32 rounding."""
    from temper.engine import EngineArgs, LLMEngine

    engine = LLMEngine(EngineArgs(model=str(model_dir("deepseek_v3")), device=device, num_kv_blocks=64,
                                  max_model_len=64, dtype="float32", kernels="torch", cuda_graphs=False))
    routers = [m for m in engine.model_runner.model.modules() if isinstance(m, TopkRouter)]
    assert routers and routers[0].topk_groups < routers[0].num_groups
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for router in routers:
            router.e_score_correction_bias.copy_(0.5 * torch.randn(router.e_score_correction_bias.shape, generator=g))
    prompts = hf.prompts(3, 3, 20, seed=5)
    prompts += [prompts[1] + [7, 8, 9]]
    assert_group_keeps_greedy(engine, prompts, {"routing"}, routing, "sigmoid_topk", monkeypatch)


def test_qwen3_moe_engine_on_the_routing_kernel_generates_the_reference_tokens(model_dir, hf, monkeypatch, device):
    """The tiny Qwen3-MoE (softmax routing, renormalised; float32) with only "routing" on vs all kernels off:
    `SparseMoeBlock.route` takes `routing.softmax_topk`; the greedy tokens (a prefix-cache hit included) and,
    asked for, the experts each token was routed to are the reference's, log-probs to float32 rounding."""
    from temper.engine import EngineArgs, LLMEngine

    engine = LLMEngine(EngineArgs(model=str(model_dir("qwen3_moe")), device=device, num_kv_blocks=64,
                                  max_model_len=64, dtype="float32", kernels="torch", cuda_graphs=False))
    assert any(isinstance(m, moe.SparseMoeBlock) for m in engine.model_runner.model.modules())
    prompts = hf.prompts(3, 3, 20, seed=6)
    prompts += [max(prompts, key=len) + [5, 6, 7]]
    reference_routing = routed_experts(engine, prompts)
    assert_group_keeps_greedy(engine, prompts, {"routing"}, routing, "softmax_topk", monkeypatch)
    for ref, got in zip(reference_routing, routed_experts(engine, prompts)):
        assert got.shape == ref.shape and (got == ref).all()


def routed_experts(engine, prompts: list[list[int]]) -> list:
    """Each prompt's greedy run's routed experts (`RequestOutput.routed_experts`, asked for per request)."""
    from temper.engine import SamplingParams

    greedy = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    ids = [engine.add_request(p, greedy, return_routed_experts=True) for p in prompts]
    final = {}
    while engine.has_unfinished_requests():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    return [final[i].routed_experts for i in ids]


# ---- GPU: the real router shapes -----------------------------------------------------------------------

# (experts, top_k, groups, groups kept, renormalise, routed scaling factor)
REAL_SIGMOID = {
    "moonlight-16b-a3b": (64, 6, 1, 1, True, 2.446),
    "deepseek-v3": (256, 8, 8, 4, True, 2.5),
    "glm4.5": (160, 8, 1, 1, True, 2.5),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [1, 64, 4096])
@pytest.mark.parametrize("model", list(REAL_SIGMOID))
def test_gpu_sigmoid_topk_at_real_shapes(model, tokens):
    num_experts, top_k, *rest = REAL_SIGMOID[model]
    logits, bias = sigmoid_inputs(tokens, num_experts, "cuda", seed=tokens)
    assert_same_routing(routing.sigmoid_topk(logits, bias, top_k, *rest), grouped_topk(logits, bias, top_k, *rest))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 64, 4096])
def test_gpu_softmax_topk_at_qwen3_30b_a3b_shape(tokens, dtype):
    logits = distinct_logits(tokens, 128, dtype, "cuda", seed=tokens)
    assert_same_routing(routing.softmax_topk(logits, 8, True), moe.softmax_topk(logits, 8, True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", list(REAL_SIGMOID))
def test_gpu_sigmoid_topk_replays_from_a_cuda_graph(model):
    num_experts, top_k, *rest = REAL_SIGMOID[model]
    logits, bias = sigmoid_inputs(64, num_experts, "cuda")
    routing.sigmoid_topk(logits, bias, top_k, *rest)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = routing.sigmoid_topk(logits, bias, top_k, *rest)
    for seed in (1, 2):
        new_logits, new_bias = sigmoid_inputs(64, num_experts, "cuda", seed=seed)
        logits.copy_(new_logits)
        bias.copy_(new_bias)
        graph.replay()
        assert_same_routing((out[0].clone(), out[1].clone()), grouped_topk(logits, bias, top_k, *rest))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_experts, top_k", [(64, 6), (128, 8), (160, 8), (256, 8)])
def test_gpu_self_check_keeps_the_routing_kernels(num_experts, top_k):
    assert passing_groups(torch.device("cuda"), torch.bfloat16, experts_shape(num_experts, top_k),
                          {"routing"}) == {"routing"}
