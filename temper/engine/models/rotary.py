"""Rotary position embeddings (RoPE): default, linear and llama3 scaling, as Hugging Face computes them;
YaRN (`yarn_parameters`) for the models that opt in (DeepSeek-V3).

Reads the RoPE settings from either config layout: transformers 5 (``config.rope_parameters`` with
``rope_theta`` and ``rope_type`` inside) or 4.x (``config.rope_theta`` + ``config.rope_scaling``).
cos/sin are precomputed for every position in float32 and cast to the activation dtype when applied,
which is what HF does per call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(hf_config) -> dict:
    """{"rope_type", "rope_theta", ...scaling keys} from an HF config of either layout."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        params = dict(params)
    else:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(hf_config, "rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def inverse_frequencies(params: dict, head_dim: int, max_position_embeddings: int) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies for `params` (see `rope_parameters`)."""
    rope_type = params["rope_type"]
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise NotImplementedError(
            f"rope_type {rope_type!r} is not supported by temper's engine; supported: {SUPPORTED_ROPE_TYPES}"
        )
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (params["rope_theta"] ** exponents)
    if rope_type == "linear":
        inv_freq = inv_freq / params["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_scaling(inv_freq, params, max_position_embeddings)
    return inv_freq


def _llama3_scaling(inv_freq: torch.Tensor, params: dict, max_position_embeddings: int) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling (HF `_compute_llama3_parameters`)."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params.get("original_max_position_embeddings", max_position_embeddings)
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature term, 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_parameters(params: dict, rotary_dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN ("NTK-by-parts" interpolation, arXiv 2309.00071) as HF's `_compute_yarn_parameters`: [rotary_dim // 2]
    float32 inverse frequencies -- the original ones above the ``beta_fast`` rotations over the original context,
    divided by ``factor`` below ``beta_slow``, a linear ramp between -- and the factor on cos/sin (from
    ``mscale``/``mscale_all_dim`` when both are given, else from ``factor``)."""
    base, factor = params["rope_theta"], params.get("factor")
    original = params["original_max_position_embeddings"]
    factor = factor if factor is not None else max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        attention_factor = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
                            if mscale and mscale_all_dim else yarn_mscale(factor))

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times over `original`
        return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(params.get("beta_fast") or 32), correction_dim(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
    extrapolated = 1 - ramp  # the share of each frequency kept as it was
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - extrapolated) + 1.0 / pos_freqs * extrapolated
    return inv_freq, float(attention_factor)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """`attention_factor`: multiplies cos and sin (YaRN's; 1 for the other RoPE types)."""

    def __init__(self, head_dim: int, max_len: int, inv_freq: torch.Tensor, attention_factor: float = 1.0):
        super().__init__()
        positions = torch.arange(max_len, dtype=torch.float32, device=inv_freq.device)
        freqs = positions[:, None] * inv_freq[None, :].float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * attention_factor, persistent=False)  # [max_len, head_dim] float32
        self.register_buffer("sin", emb.sin() * attention_factor, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, Hq, D], k [T, Hkv, D]."""
        cos = self.cos[positions].to(q.dtype)[:, None, :]
        sin = self.sin[positions].to(q.dtype)[:, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class PartialRotary(nn.Module):
    """`RotaryEmbedding` (half-split pairs, GPT-NeoX's layout) on the first `rotary_dim` dimensions of each head;
    the rest pass through (HF GPT-NeoX's and GLM-4.5's partial RoPE; GLM4's pairs are interleaved instead)."""

    def __init__(self, rotary_dim: int, max_len: int, inv_freq: torch.Tensor):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.rope = RotaryEmbedding(rotary_dim, max_len, inv_freq)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, Hq, D], k [T, Hkv, D]."""
        dim = self.rotary_dim
        q_rot, k_rot = self.rope(positions, q[..., :dim], k[..., :dim])
        return torch.cat((q_rot, q[..., dim:]), dim=-1), torch.cat((k_rot, k[..., dim:]), dim=-1)
