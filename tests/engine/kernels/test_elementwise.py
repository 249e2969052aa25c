"""Fused layer kernels vs the PyTorch modules they replace (same rounding points, so near bit-equal)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import paged_cache, ulp_close

from temper.engine.kernels import elementwise
from temper.engine.models.layers import RMSNorm, silu_and_mul
from temper.engine.models.rotary import RotaryEmbedding, inverse_frequencies

DTYPES = [torch.float32, torch.bfloat16]


def randn(*shape, dtype, device, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [64, 96])
def test_add_rms_norm_matches_module(dtype, n, device):
    norm = RMSNorm(n, 1e-6).to(device)
    norm.weight.data = randn(n, dtype=dtype, device=device, seed=1, scale=0.2) + 1
    x, res = randn(7, n, dtype=dtype, device=device, seed=2), randn(7, n, dtype=dtype, device=device, seed=3)
    ulp_close(elementwise.add_rms_norm(x, None, norm.weight, 1e-6), norm(x))
    out, new_res = elementwise.add_rms_norm(x, res, norm.weight, 1e-6)
    ulp_close(new_res, x + res, max_ulps=0, frac=0)
    ulp_close(out, norm(x + res))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_rope_matches_modules(dtype, qk_norm, device):
    hq, hkv, d, t = 4, 2, 32, 9
    rotary = RotaryEmbedding(d, 64, inverse_frequencies({"rope_type": "default", "rope_theta": 1e4}, d, 64)).to(device)
    qkv = randn(t, (hq + 2 * hkv) * d, dtype=dtype, device=device)
    wide = torch.zeros(t, qkv.shape[1] + 8, dtype=dtype, device=device)  # strided rows
    wide[:, : qkv.shape[1]] = qkv
    positions = torch.tensor([0, 5, 63, 7, 7, 1, 30, 2, 11], device=device)
    q_norm, k_norm = RMSNorm(d, 1e-6).to(device), RMSNorm(d, 1e-6).to(device)
    q_norm.weight.data = randn(d, dtype=dtype, device=device, seed=4, scale=0.2) + 1
    k_norm.weight.data = randn(d, dtype=dtype, device=device, seed=5, scale=0.2) + 1
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k = q.reshape(t, hq, d), k.reshape(t, hkv, d)
    if qk_norm:
        q, k = q_norm(q), k_norm(k)
    q_ref, k_ref = rotary(positions, q, k)
    view = wide[:, : qkv.shape[1]]
    elementwise.qk_norm_rope_(view, positions, q_norm.weight if qk_norm else None, k_norm.weight if qk_norm else None,
                              1e-6, rotary.cos, rotary.sin, hq, hkv, d)
    atol = 1e-6 if dtype == torch.float32 else 0.0  # float32: q*cos - x2*sin may cancel
    ulp_close(view[:, : hq * d].reshape(t, hq, d), q_ref, atol=atol)
    ulp_close(view[:, hq * d : (hq + hkv) * d].reshape(t, hkv, d), k_ref, atol=atol)
    assert torch.equal(view[:, (hq + hkv) * d :], v)  # v untouched
    assert torch.equal(wide[:, qkv.shape[1] :], torch.zeros_like(wide[:, qkv.shape[1] :]))


@pytest.mark.parametrize("layout", ["token", "head"])
def test_qk_norm_rope_writes_the_rotated_k_and_v_into_their_cache_slots(layout, device):
    """With kv_cache the same launch writes each token's K (after norm + RoPE) and V to its slot, as
    `store_kv` would; a padding row (slot -1) writes nothing, and no other slot changes."""
    hq, hkv, d, t, page, blocks = 4, 2, 32, 5, 4, 6
    rotary = RotaryEmbedding(d, 64, inverse_frequencies({"rope_type": "default", "rope_theta": 1e4}, d, 64)).to(device)
    qkv = randn(t, (hq + 2 * hkv) * d, dtype=torch.bfloat16, device=device)
    positions = torch.tensor([3, 0, 9, 17, 4], device=device)
    weight = randn(d, dtype=torch.bfloat16, device=device, seed=4, scale=0.2) + 1
    slots = torch.tensor([5, 22, -1, 0, 13], device=device)
    caches = [paged_cache((blocks, page, hkv, d), layout, dtype=torch.bfloat16, device=device).fill_(7.0)
              for _ in range(2)]
    expected = qkv.clone()
    elementwise.qk_norm_rope_(expected, positions, weight, weight, 1e-6, rotary.cos, rotary.sin, hq, hkv, d)
    elementwise.qk_norm_rope_(qkv, positions, weight, weight, 1e-6, rotary.cos, rotary.sin, hq, hkv, d,
                              (caches[0], caches[1], slots))
    assert torch.equal(qkv, expected)  # q and k in place, as without the cache
    k = expected[:, hq * d : (hq + hkv) * d].reshape(t, hkv, d)
    v = expected[:, (hq + hkv) * d :].reshape(t, hkv, d)
    for cache, new in zip(caches, (k, v)):
        flat = cache.reshape(blocks * page, hkv, d)  # a copy for the head-major layout: read-only use
        written = slots >= 0
        assert torch.equal(flat[slots[written]], new[written])
        untouched = torch.ones(blocks * page, dtype=torch.bool, device=device)
        untouched[slots[written]] = False
        assert (flat[untouched] == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_reference(dtype, device):
    x = randn(5, 2 * 1100, dtype=dtype, device=device, scale=3.0)  # two column blocks, a ragged tail
    ulp_close(elementwise.silu_and_mul(x), silu_and_mul(x), atol=1e-5 if dtype == torch.float32 else 0.0)


def test_empty_inputs(device):
    w = torch.ones(8, device=device)
    assert elementwise.add_rms_norm(torch.empty(0, 8, device=device), None, w, 1e-6).shape == (0, 8)
    assert elementwise.silu_and_mul(torch.empty(0, 16, device=device)).shape == (0, 8)
