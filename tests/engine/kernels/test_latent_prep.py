"""`kernels.latent_prep` (MLA's query and cache entry in one launch) vs `deepseek_v3.LatentAttention`'s PyTorch
glue; the batched W_UK / W_UV GEMMs of its fused forward vs the reference's einsums; the self-check; the
tiny DeepSeek-V3 engine with kernel group "layers" on vs off.

What is exact: the query (q_latent copied, RoPE rounded where `RotaryEmbedding` rounds) and the entry's
rope columns are bit-equal to the reference in bf16, and in float32 too except on a GPU (which may
contract ``q * cos + rotate_half(q) * sin`` into an FMA); the entry's normalised latent differs only by the
float32 sum of squares' order (float32: last bits; bf16: a rare one-ulp difference). On CPU the bmm forms
are bit-equal to the einsums (the same GEMM over the same sums).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import assert_group_keeps_greedy, ulp_close

from temper.engine import kernels
from temper.engine.kernels import latent_prep as latent_prep_module
from temper.engine.kernels.latent_prep import latent_prep
from temper.engine.kernels.self_check import passing_groups
from temper.engine.models.deepseek_v3 import LatentAttention, LatentRotary
from temper.engine.models.layers import RMSNorm
from temper.engine.models.rotary import inverse_frequencies, yarn_parameters

MOONLIGHT = SimpleNamespace(heads=16, nope=128, rope=64, rank=512, v=128)


def randn(*shape, dtype, device, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(dtype).to(device)


def make_rotary(rope: int, yarn: bool, interleave: bool, device) -> LatentRotary:
    if yarn:  # DeepSeek-V3's settings over a short original context: attention factor 1.155
        inv_freq, factor = yarn_parameters({"rope_theta": 1e4, "factor": 40.0, "original_max_position_embeddings": 64,
                                            "mscale": 1.0, "mscale_all_dim": 0.5}, rope, 4096)
        assert factor != 1.0
    else:
        inv_freq, factor = inverse_frequencies({"rope_type": "default", "rope_theta": 5e4}, rope, 4096), 1.0
    return LatentRotary(rope, 256, inv_freq, interleave, factor).to(device)


def inputs(tokens, heads, nope, rope, rank, dtype, device, seed=0):
    """q [T, H, nope + rope] with strided rows, q_latent as the bmm gives it [H, T, rank], kv [T, rank + rope]
    with strided rows, positions [T], kv_a_layernorm."""
    q = randn(tokens, heads * (nope + rope) + 8, dtype=dtype, device=device, seed=seed)[:, :-8]
    q = q.unflatten(1, (heads, nope + rope))
    q_latent = randn(heads, tokens, rank, dtype=dtype, device=device, seed=seed + 1)
    kv = randn(tokens, rank + rope + 4, dtype=dtype, device=device, seed=seed + 2, scale=3.0)[:, : rank + rope]
    positions = torch.randint(0, 256, (tokens,), generator=torch.Generator().manual_seed(seed)).to(device)
    norm = RMSNorm(rank, 1e-6).to(device=device, dtype=dtype)
    norm.weight.data = randn(rank, dtype=dtype, device=device, seed=seed + 3, scale=0.2) + 1
    return q, q_latent, kv, positions, norm


def reference(q, q_latent, kv, positions, norm, rotary, rank):
    """LatentAttention.forward's PyTorch glue: (query [T, H, rank + rope], entry [T, 1, rank + rope])."""
    rope = kv.shape[-1] - rank
    q_rope, k_rope = rotary(positions, q[..., -rope:], kv[:, None, rank:])
    entry = torch.cat((norm(kv[:, :rank])[:, None, :], k_rope), dim=-1)
    return torch.cat((q_latent.transpose(0, 1), q_rope), dim=-1), entry


def run_kernel(q, q_latent, kv, positions, norm, rotary):
    return latent_prep(q, q_latent.transpose(0, 1), kv, positions, rotary.rope.cos, rotary.rope.sin, norm.weight,
                       norm.eps, rotary.interleave)


def assert_matches(query, entry, ref_query, ref_entry, rank, device):
    exact = query.dtype != torch.float32 or device == "cpu"  # a GPU may fuse RoPE's product and sum
    if exact:
        assert torch.equal(query, ref_query)
        assert torch.equal(entry[..., rank:], ref_entry[..., rank:])
    else:
        assert torch.equal(query[..., :rank], ref_query[..., :rank])
        ulp_close(query[..., rank:], ref_query[..., rank:], atol=1e-6)
        ulp_close(entry[..., rank:], ref_entry[..., rank:], atol=1e-6)
    ulp_close(entry[..., :rank], ref_entry[..., :rank], frac=0.002)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("yarn", [True, False])
@pytest.mark.parametrize("tokens, heads", [(1, 16), (7, 3), (33, 1)])
def test_latent_prep_matches_the_reference_at_moonlight_widths(tokens, heads, yarn, interleave, dtype, device):
    m = MOONLIGHT
    q, q_latent, kv, positions, norm = inputs(tokens, heads, m.nope, m.rope, m.rank, dtype, device)
    rotary = make_rotary(m.rope, yarn, interleave, device)
    query, entry = run_kernel(q, q_latent, kv, positions, norm, rotary)
    assert query.shape == (tokens, heads, m.rank + m.rope) and entry.shape == (tokens, 1, m.rank + m.rope)
    assert_matches(query, entry, *reference(q, q_latent, kv, positions, norm, rotary, m.rank), m.rank, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_latent_prep_at_many_tokens_and_heads_and_the_tiny_widths(dtype, device):
    """T 33 x 16 heads at Moonlight's widths; the tiny model's (rank 32, rope 16, nope 32) and a rope width
    whose half is not a power of two."""
    for tokens, heads, nope, rope, rank in [(33, 16, 128, 64, 512), (7, 4, 32, 16, 32), (5, 3, 16, 24, 48)]:
        q, q_latent, kv, positions, norm = inputs(tokens, heads, nope, rope, rank, dtype, device, seed=tokens)
        rotary = make_rotary(rope, True, True, device)
        query, entry = run_kernel(q, q_latent, kv, positions, norm, rotary)
        assert_matches(query, entry, *reference(q, q_latent, kv, positions, norm, rotary, rank), rank, device)


def test_latent_prep_rejects_bad_widths(device):
    q, q_latent, kv, positions, norm = inputs(2, 2, 16, 16, 32, torch.float32, device)
    rotary = make_rotary(16, False, True, device)
    with pytest.raises(ValueError, match="rope width"):
        latent_prep(q, q_latent.transpose(0, 1), kv[:, :-1], positions, rotary.rope.cos, rotary.rope.sin,
                    norm.weight, 1e-6, True)
    with pytest.raises(ValueError, match="dtype"):
        latent_prep(q, q_latent.double().transpose(0, 1), kv, positions, rotary.rope.cos, rotary.rope.sin,
                    norm.weight, 1e-6, True)
    with pytest.raises(ValueError, match="contiguous"):
        latent_prep(q, q_latent.transpose(0, 1).transpose(1, 2).contiguous().transpose(1, 2), kv, positions,
                    rotary.rope.cos, rotary.rope.sin, norm.weight, 1e-6, True)
    query, entry = latent_prep(q[:0], q_latent[:, :0].transpose(0, 1), kv[:0], positions[:0], rotary.rope.cos,
                               rotary.rope.sin, norm.weight, 1e-6, True)
    assert query.shape == (0, 2, 48) and entry.shape == (0, 1, 48)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_bmms_equal_the_einsums(dtype, device):
    """The fused forward's GEMMs on strided views, W_UV's written through a strided out=, vs the reference's
    einsums: bit-equal on CPU (the same GEMM and sums, without the copies); on a GPU to rounding."""
    m, tokens = MOONLIGHT, 5
    q = randn(tokens, m.heads * (m.nope + m.rope), dtype=dtype, device=device).view(tokens, m.heads, -1)
    w = randn(m.heads * (m.nope + m.v), m.rank, dtype=dtype, device=device, seed=1, scale=m.rank**-0.5)
    w_uk, w_uv = w.view(m.heads, m.nope + m.v, m.rank).split([m.nope, m.v], dim=1)
    out = randn(tokens, m.heads, m.rank + m.rope, dtype=dtype, device=device, seed=2)
    q_latent = torch.bmm(q[..., : m.nope].transpose(0, 1), w_uk).transpose(0, 1)
    values = torch.empty(tokens, m.heads * m.v, dtype=dtype, device=device)
    torch.bmm(out[..., : m.rank].transpose(0, 1), w_uv.transpose(1, 2),
              out=values.view(tokens, m.heads, m.v).transpose(0, 1))
    ref_latent = torch.einsum("thn,hnr->thr", q[..., : m.nope], w_uk)
    ref_values = torch.einsum("thr,hvr->thv", out[..., : m.rank], w_uv).reshape(tokens, -1)
    if device == "cpu":
        assert torch.equal(q_latent, ref_latent) and torch.equal(values, ref_values)
    else:
        torch.testing.assert_close(q_latent, ref_latent)
        torch.testing.assert_close(values, ref_values)


def latent_shape(heads=MOONLIGHT.heads, rank=MOONLIGHT.rank, rope=MOONLIGHT.rope):
    return SimpleNamespace(num_heads=heads, num_kv_heads=1, head_dim=rank + rope, hidden_size=64,
                           intermediate_size=96, block_size=16, vocab_size=1024, qk_norm=False,
                           latent_value_dim=rank)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_check_keeps_layers_with_latent_prep_at_moonlight_widths(dtype, device, monkeypatch):
    calls, real = [], latent_prep_module.latent_prep
    monkeypatch.setattr(latent_prep_module, "latent_prep", lambda *a: calls.append(a[-1]) or real(*a))
    assert passing_groups(torch.device(device), dtype, latent_shape(), {"layers"}) == {"layers"}
    assert calls == [True, False]  # rope_interleave on and off


@pytest.mark.parametrize("wrong", ["interleave", "factor", "norm"])
def test_self_check_leaves_layers_to_the_reference_when_latent_prep_is_wrong(wrong, device, monkeypatch):
    real = latent_prep_module.latent_prep

    def broken(q, q_latent, kv, positions, cos, sin, weight, eps, interleave):
        if wrong == "interleave":
            return real(q, q_latent, kv, positions, cos, sin, weight, eps, not interleave)
        if wrong == "factor":  # cos/sin without YaRN's attention factor
            return real(q, q_latent, kv, positions, cos / cos[0, 0], sin / cos[0, 0], weight, eps, interleave)
        query, entry = real(q, q_latent, kv, positions, cos, sin, weight, eps, interleave)
        entry[..., : q_latent.shape[-1]] /= weight  # the norm without its weight
        return query, entry

    monkeypatch.setattr(latent_prep_module, "latent_prep", broken)
    assert passing_groups(torch.device(device), torch.float32, latent_shape(heads=2), {"layers"}) == set()


@pytest.mark.slow
@pytest.mark.parametrize("interleave", [True, False])
def test_deepseek_v3_engine_with_layers_on_generates_the_reference_tokens(interleave, model_dir, hf, monkeypatch,
                                                                          device):
    """The tiny DeepSeek-V3 (float32) with only "layers" on vs all kernels off: every LatentAttention takes the
    fused forward; the same greedy tokens (a prefix-cache hit included), log-probs to float32 rounding."""
    from temper.engine import EngineArgs, LLMEngine

    engine = LLMEngine(EngineArgs(model=str(model_dir("deepseek_v3", rope_interleave=interleave)), device=device,
                                  num_kv_blocks=64, max_model_len=64, dtype="float32", kernels="torch",
                                  cuda_graphs=False))
    attentions = [m for m in engine.model_runner.model.modules() if isinstance(m, LatentAttention)]
    assert attentions and attentions[0].rotary.interleave == interleave
    prompts = hf.prompts(2, 3, 20, seed=8) + hf.prompts(1, 21, 21, seed=9)  # the last fills a cache block
    prompts += [prompts[-1] + [5, 6, 7]]  # the longest and a few more tokens: a prefix-cache hit
    assert_group_keeps_greedy(engine, prompts, {"layers"}, latent_prep_module, "latent_prep", monkeypatch)


# ---- GPU: Moonlight's widths in bf16, eagerly and from a CUDA graph ----------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [1, 64, 4096])
@pytest.mark.parametrize("interleave", [True, False])
def test_gpu_latent_prep_at_moonlight_widths(tokens, interleave):
    m = MOONLIGHT
    q, q_latent, kv, positions, norm = inputs(tokens, m.heads, m.nope, m.rope, m.rank, torch.bfloat16, "cuda")
    rotary = make_rotary(m.rope, True, interleave, "cuda")
    query, entry = run_kernel(q, q_latent, kv, positions, norm, rotary)
    assert_matches(query, entry, *reference(q, q_latent, kv, positions, norm, rotary, m.rank), m.rank, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_latent_prep_replays_from_a_cuda_graph():
    m, tokens = MOONLIGHT, 64
    q, q_latent, kv, positions, norm = inputs(tokens, m.heads, m.nope, m.rope, m.rank, torch.bfloat16, "cuda")
    rotary = make_rotary(m.rope, True, True, "cuda")
    run_kernel(q, q_latent, kv, positions, norm, rotary)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        query, entry = run_kernel(q, q_latent, kv, positions, norm, rotary)
    for seed in (1, 2):
        new = inputs(tokens, m.heads, m.nope, m.rope, m.rank, torch.bfloat16, "cuda", seed=seed)
        for static, fresh in zip((q, q_latent, kv, positions), new):
            static.copy_(fresh)
        graph.replay()
        assert_matches(query.clone(), entry.clone(), *reference(q, q_latent, kv, positions, norm, rotary, m.rank),
                       m.rank, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_self_check_keeps_layers_at_moonlight_widths():
    assert passing_groups(torch.device("cuda"), torch.bfloat16, latent_shape(), {"layers"}) == {"layers"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fused_latent_attention_forward_launches_fewer_kernels_with_the_same_result():
    """LatentAttention at Moonlight's widths in bf16, one decode token, the attention backend stubbed out
    (it returns the query): the CUDA kernels launched with "layers" on vs off (the reference: ~30 between
    the projections; fused: bmm, latent_prep, bmm), and the same output."""
    from torch.profiler import ProfilerActivity, profile

    from temper.engine.models.deepseek_v3 import DeepseekV3ForCausalLM
    from temper.engine.tp_group import TPGroup

    m = MOONLIGHT
    config = SimpleNamespace(num_attention_heads=m.heads, hidden_size=2048, qk_nope_head_dim=m.nope,
                             qk_rope_head_dim=m.rope, v_head_dim=m.v, kv_lora_rank=m.rank, q_lora_rank=None,
                             attention_bias=False, rope_theta=50000.0, rope_scaling=None,
                             max_position_embeddings=8192, rope_interleave=True)
    attention = LatentAttention(config, DeepseekV3ForCausalLM.build_rotary(config, 64), TPGroup())
    attention.rotary.to("cuda")
    for param in attention.parameters():
        param.data = (0.02 * torch.randn(param.shape)).to("cuda", torch.bfloat16)
    attention.attn.forward = lambda q, k, v, meta: q
    x, positions = randn(1, 2048, dtype=torch.bfloat16, device="cuda"), torch.tensor([5], device="cuda")

    def launches():
        attention(positions, x, None)  # compiles, warms cuBLAS up
        torch.cuda.synchronize()
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            out = attention(positions, x, None)
            torch.cuda.synchronize()
        return out, sum(1 for e in prof.events() if e.device_type.name == "CUDA")

    reference, reference_launches = launches()
    kernels.set_enabled({"layers"})
    fused, fused_launches = launches()
    print(f"CUDA kernels per LatentAttention forward: reference {reference_launches}, fused {fused_launches}")
    assert fused_launches + 20 <= reference_launches
    torch.testing.assert_close(fused, reference)
