"""The fused Triton experts (`kernels/fused_moe.py`, kernel group "fused_moe") vs the reference dispatch
(`moe.dispatch_loop`) and the grouped GEMMs (`moe.dispatch_grouped`), on CPU through the interpreter at small
sizes: the alignment by expert, every tile of `FUSED_MOE_CONFIGS`, experts without tokens and all tokens on
one expert, sizes that are not multiples of a tile; its self-check; and the tiny Qwen3-MoE and DeepSeek-V3
engines on it. float32 matches the loop to float32 rounding; bf16 rounds where the reference rounds, so it
matches the loop and the grouped GEMMs bit for bit on all but a small share of elements (where the GEMMs'
float32 summation orders round a value differently: none at these seeds, under 0.1% at others), and those
within 2 bf16 ulps of the largest term of their sum. The GPU tests (`gpu` marker): real Qwen3-30B-A3B and Moonlight
widths, every tile compiled, CUDA-graph capture and replay."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import assert_group_keeps_greedy

from temper.engine import kernels
from temper.engine.kernels import fused_moe, self_check
from temper.engine.kernels.self_check import passing_groups
from temper.engine.models import moe
from temper.engine.models.moe import dispatch_grouped, dispatch_loop, grouped_gemm_fits


def random_experts(tokens, top_k, num_experts, hidden, size, dtype, device, routing="random", seed=0,
                   weight_dtype=None):
    """Stacked expert weights, x and a routing. routing: "random" (expert 0 and the last get no token),
    "one" (every token's first slot on expert 1, so it gets every token)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*dims, scale=1.0):
        return (scale * torch.randn(*dims, generator=g, device=device)).to(dtype)

    w_gate_up, w_down = randn(num_experts, 2 * size, hidden, scale=hidden**-0.5), randn(num_experts, hidden, size,
                                                                                          scale=size**-0.5)
    scores = torch.rand(tokens, num_experts, generator=g, device=device)
    if num_experts - 2 >= top_k:
        scores[:, [0, -1]] = -1.0
    if routing == "one":
        scores[:, 1] = 2.0
    weights, ids = scores.topk(top_k, dim=-1)
    return w_gate_up, w_down, randn(tokens, hidden), weights.to(weight_dtype or dtype), ids


def assert_matches(out, ref, terms=None):
    """float32: to float32 rounding; bf16: equal but for 1% of elements, those within 2 ulps of the largest
    term of their sum (`terms`, default the reference itself)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        return
    scale = (ref if terms is None else terms).float().abs().amax().clamp_min(1e-30)
    diff = (out.float() - ref.float()).abs()
    assert (diff <= 2 * torch.finfo(out.dtype).eps * scale).all(), f"max diff {diff.max().item()}"
    assert (out != ref).float().mean().item() <= 0.01, f"{(out != ref).float().mean().item():.4f} of elements differ"


# (tokens, top_k, experts, hidden, expert size): sizes that divide no tile (72, 40, 48 vs 32/64/128) included
CASES = [
    (1, 1, 4, 64, 32), (1, 8, 64, 64, 48), (3, 2, 4, 72, 40), (3, 6, 8, 64, 32), (17, 2, 8, 72, 40),
    (17, 8, 64, 64, 32), (64, 1, 8, 64, 32), (64, 6, 8, 72, 40), (64, 8, 64, 64, 48),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens, top_k, num_experts, hidden, size", CASES)
def test_fused_matches_the_loop_and_the_grouped_gemms(tokens, top_k, num_experts, hidden, size, dtype, device):
    args = random_experts(tokens, top_k, num_experts, hidden, size, dtype, device)
    out = fused_moe.fused_experts(*args)
    assert_matches(out, dispatch_loop(*args))
    if dtype == torch.bfloat16 and grouped_gemm_fits(hidden, size, dtype) and (
            device != "cpu" or kernels.grouped_mm_runs_on_cpu()):
        assert_matches(out, dispatch_grouped(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_token_on_one_expert_and_float32_routing_weights(dtype, device):
    """Expert 1 gets all 64 tokens (4 blocks of 16 rows); DeepSeek's routing weights stay float32."""
    args = random_experts(64, 2, 8, 64, 32, dtype, device, routing="one", weight_dtype=torch.float32)
    assert (args[4] == 1).any(dim=1).all()
    assert_matches(fused_moe.fused_experts(*args), dispatch_loop(*args))


@pytest.mark.parametrize("config", fused_moe.FUSED_MOE_CONFIGS)
def test_every_config_matches_the_loop(config, device):
    for dtype in (torch.float32, torch.bfloat16):
        args = random_experts(17, 2, 8, 72, 40, dtype, device, seed=2)
        assert_matches(fused_moe.fused_experts(*args, config=config), dispatch_loop(*args))


@pytest.mark.parametrize("tokens, top_k, num_experts, block_m, routing", [
    (1, 1, 4, 16, "random"), (17, 2, 8, 16, "random"), (64, 8, 64, 16, "random"), (64, 2, 8, 16, "one"),
    (40, 6, 8, 64, "random"),
])
def test_align_groups_the_pairs_by_expert_in_padded_blocks(tokens, top_k, num_experts, block_m, routing, device):
    ids = random_experts(tokens, top_k, num_experts, 8, 8, torch.float32, device, routing=routing)[4]
    pairs, block_expert, block_rows = (t.cpu() for t in fused_moe.align(ids, num_experts, block_m))
    flat = ids.flatten().cpu()
    num_pairs = flat.numel()
    assert block_expert.numel() == fused_moe.max_blocks(num_pairs, num_experts, block_m)
    assert block_expert.numel() <= (num_pairs + num_experts * (block_m - 1)) // block_m
    counts = torch.bincount(flat, minlength=num_experts)
    used = int(((counts + block_m - 1) // block_m).sum())
    assert (block_expert[used:] == -1).all() and (block_expert[:used] >= 0).all()
    assert block_expert[:used].tolist() == sorted(block_expert[:used].tolist())  # ascending expert
    seen = []
    for b in range(used):
        rows = pairs[b * block_m : b * block_m + int(block_rows[b])]
        assert 0 < len(rows) <= block_m and (flat[rows.long()] == block_expert[b]).all()
        seen += rows.tolist()
    assert sorted(seen) == list(range(num_pairs))  # every pair once; within an expert in pair order
    assert seen == sorted(seen, key=lambda p: (int(flat[p]), p))


def test_no_tokens(device):
    args = random_experts(0, 2, 4, 64, 32, torch.float32, device)
    assert fused_moe.fused_experts(*args).shape == (0, 64)


def test_pick_config_grows_the_tile_with_the_pairs_per_expert():
    assert fused_moe.pick_config(64, 8, 128) == fused_moe.DECODE_CONFIG and fused_moe.DECODE_CONFIG[0] == 16
    assert fused_moe.pick_config(512, 8, 128) == fused_moe.DECODE_CONFIG  # 32 pairs per expert
    assert fused_moe.pick_config(513, 8, 128) == fused_moe.PREFILL_CONFIG == (64, 128, 64, 8, 3)  # just over 32
    assert fused_moe.pick_config(1024, 8, 128) == fused_moe.PREFILL_CONFIG  # 64 pairs per expert
    assert fused_moe.pick_config(2048, 8, 128) == fused_moe.LARGE_PREFILL_CONFIG == (128, 128, 64, 8, 3)  # 128
    assert fused_moe.pick_config(2048, 6, 64) == fused_moe.LARGE_PREFILL_CONFIG  # Moonlight: 192


def test_self_check_keeps_the_fused_experts_and_catches_a_wrong_kernel(device, monkeypatch):
    shape = SimpleNamespace(experts=(8, 72, 40, 2))
    real, tiles = fused_moe.fused_experts, []

    def recording(w_gate_up, w_down, x, weights, ids, config=None):
        tiles.append(fused_moe.pick_config(x.shape[0], ids.shape[1], w_gate_up.shape[0]))
        return real(w_gate_up, w_down, x, weights, ids, config)

    monkeypatch.setattr(fused_moe, "fused_experts", recording)
    assert passing_groups(torch.device(device), torch.float32, shape, {"fused_moe"}) == {"fused_moe"}
    assert set(tiles) == {fused_moe.DECODE_CONFIG, fused_moe.PREFILL_CONFIG, fused_moe.LARGE_PREFILL_CONFIG}

    def wrong(w_gate_up, w_down, x, weights, ids, config=None):  # the routing weight applied twice
        return real(w_gate_up, w_down, x, weights * weights, ids, config)

    monkeypatch.setattr(fused_moe, "fused_experts", wrong)
    assert passing_groups(torch.device(device), torch.float32, shape, {"fused_moe"}) == set()


def test_experts_take_the_fused_path_first(device, monkeypatch):
    """With "fused_moe" and "moe" on, `GroupedExperts` runs the fused kernels; with "moe" only, the grouped
    GEMMs (`EngineArgs.moe_kernel="grouped_mm"` leaves "fused_moe" out)."""
    from temper.engine.tp_group import TPGroup

    experts = moe.GroupedExperts(8, 64, 32, 2, TPGroup()).to(device)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    x, (weights, ids) = torch.randn(5, 64, device=device), torch.rand(5, 8, device=device).topk(2, dim=-1)
    calls = []
    monkeypatch.setattr(fused_moe, "fused_experts", lambda *a: calls.append("fused") or dispatch_loop(*a))
    monkeypatch.setattr(moe, "dispatch_grouped", lambda *a: calls.append("grouped") or dispatch_loop(*a))
    kernels.set_enabled({"fused_moe", "moe"})
    experts(x, weights, ids)
    kernels.set_enabled({"moe"})
    experts(x, weights, ids)
    expected = ["fused", "grouped"] if device != "cpu" or kernels.grouped_mm_runs_on_cpu() else ["fused"]
    assert calls == expected
    shape = SimpleNamespace(experts=(8, 64, 32, 2))
    assert self_check.enable("triton", torch.device(device), torch.float32, shape, without=("fused_moe",)) == (
        set(kernels.GROUPS) - {"fused_moe"})


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_engine_on_the_fused_experts_generates_the_reference_tokens(arch, model_dir, hf, monkeypatch, device):
    """The tiny Qwen3-MoE and DeepSeek-V3 engines (float32) with only "fused_moe" on: the reference
    engine's greedy tokens (prefix-cache hit included) and its log-probs to float32 rounding."""
    from temper.engine import EngineArgs, LLMEngine

    path = model_dir(arch)
    engine = LLMEngine(EngineArgs(model=str(path), device=device, num_kv_blocks=64, max_model_len=64,
                                  dtype="float32", kernels="torch", cuda_graphs=False))
    prompts = hf.prompts(3, 3, 20, seed=5)
    prompts += [prompts[1] + [7, 8, 9]]
    assert_group_keeps_greedy(engine, prompts, {"fused_moe"}, fused_moe, "fused_experts", monkeypatch, 1e-4,
                              forbidden=[(moe, "dispatch_loop")])


# ---- GPU: the real expert widths ------------------------------------------------------------------------

# (experts, hidden, expert intermediate size, top-k, routing weights' dtype)
REAL_SHAPES = {
    "qwen3-30b-a3b": (128, 2048, 768, 8, torch.bfloat16),
    "moonlight-16b-a3b": (64, 2048, 1408, 6, torch.float32),  # DeepSeek's sigmoid weights stay float32
}


def real_experts(shape, tokens, seed=0):
    num_experts, hidden, size, top_k, weight_dtype = REAL_SHAPES[shape]
    return random_experts(tokens, top_k, num_experts, hidden, size, torch.bfloat16, "cuda", seed=seed,
                          weight_dtype=weight_dtype)


def close_to_grouped(out, args):
    """Relative error under 1e-2 against the loop and the grouped GEMMs, and bit-equal to the grouped GEMMs
    on at least 95% of the elements (the same rounding points; only the GEMMs' summation orders differ)."""
    grouped, loop = dispatch_grouped(*args), dispatch_loop(*args)
    for ref in (grouped, loop):
        assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() < 1e-2
    assert (out != grouped).float().mean().item() <= 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [1, 64, 512])
@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_gpu_real_widths_match_the_grouped_gemms(shape, tokens):
    args = real_experts(shape, tokens)
    close_to_grouped(fused_moe.fused_experts(*args), args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", fused_moe.FUSED_MOE_CONFIGS)
@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_gpu_every_config_compiles_and_matches(shape, config):
    for tokens in (16, 512):
        args = real_experts(shape, tokens, seed=1)
        close_to_grouped(fused_moe.fused_experts(*args, config=config), args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_gpu_fused_replays_from_a_cuda_graph_with_new_routing(shape):
    static = list(real_experts(shape, 64, seed=2))
    fused_moe.fused_experts(*static)  # warm-up (compiles) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe.fused_experts(*static)
    for seed in (3, 4):  # other tokens, other experts, other block tables: all on the device
        for buffer, new in zip(static[2:], real_experts(shape, 64, seed=seed)[2:]):
            buffer.copy_(new)
        graph.replay()
        close_to_grouped(out.clone(), static)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_gpu_self_check_keeps_the_fused_experts(shape):
    num_experts, hidden, size, top_k, _ = REAL_SHAPES[shape]
    check = SimpleNamespace(experts=(num_experts, hidden, size, top_k))
    assert passing_groups(torch.device("cuda"), torch.bfloat16, check, {"fused_moe", "moe"}) == {"fused_moe", "moe"}
