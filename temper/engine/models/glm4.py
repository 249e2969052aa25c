"""GLM-4 (GLM-4-9B-0414, GLM-4-32B-0414; HF `Glm4ForCausalLM`): a Llama-style decoder with three
departures, all as Hugging Face computes them.

- Partial, interleaved RoPE: only the first ``partial_rotary_factor * head_dim`` dimensions of q and k
  rotate, in adjacent pairs (2i, 2i+1) at frequency i (GPT-J layout), the rest pass through.
- Two extra RMSNorms per layer ("sandwich" norms): on the attention output before the residual add
  (``post_self_attn_layernorm``) and on the MLP output before its add (``post_mlp_layernorm``);
  ``post_attention_layernorm`` is still the MLP's input norm.
- Biases on q/k/v when ``attention_bias`` (true in the released configs), none on o_proj or the MLP;
  the MLP's gate and up projections are one HF tensor, ``mlp.gate_up_proj.weight`` [2 * I, hidden],
  gate rows first.

The fused q/k-norm + RoPE kernel of the dense path assumes full, half-split RoPE, so GLM applies its
RoPE in PyTorch and lets the attention backend write K/V to the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from temper.engine.attention import AttentionMetadata
from temper.engine.models.decoder import (
    DecoderAttention,
    DecoderForCausalLM,
    DecoderSpec,
    head_dim_of,
)
from temper.engine.models.layers import MergedLinear, RMSNorm, RowParallelLinear, silu_and_mul
from temper.engine.models.rotary import inverse_frequencies, rope_parameters
from temper.engine.tp_group import TPGroup


def partial_rotary_factor(hf_config) -> float:
    """transformers 5 keeps it in ``rope_parameters``; 4.x configs at the top level (GLM's default 0.5)."""
    return rope_parameters(hf_config).get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 0.5))


def rotary_dim_of(hf_config) -> int:
    """The dimensions of each head that RoPE rotates: ``partial_rotary_factor * head_dim``, checked even."""
    head_dim = head_dim_of(hf_config)
    rotary_dim = int(head_dim * partial_rotary_factor(hf_config))
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"GLM partial_rotary_factor gives {rotary_dim} rotary dims of head_dim {head_dim}; "
                         "expected an even number in (0, head_dim]")
    return rotary_dim


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): rotate-half for interleaved pairs."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


class PartialInterleavedRotary(nn.Module):
    """RoPE on the first `rotary_dim` dimensions of each head, pairs interleaved (HF GLM's layout)."""

    def __init__(self, rotary_dim: int, max_len: int, inv_freq: torch.Tensor):
        super().__init__()
        positions = torch.arange(max_len, dtype=torch.float32, device=inv_freq.device)
        freqs = positions[:, None] * inv_freq[None, :].float()
        self.rotary_dim = rotary_dim
        self.register_buffer("cos", freqs.cos().repeat_interleave(2, dim=-1), persistent=False)  # [max_len, rotary_dim]
        self.register_buffer("sin", freqs.sin().repeat_interleave(2, dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, Hq, D], k [T, Hkv, D]."""
        cos = self.cos[positions].to(q.dtype)[:, None, :]
        sin = self.sin[positions].to(q.dtype)[:, None, :]
        return self._apply(q, cos, sin), self._apply(k, cos, sin)

    def _apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((rot * cos + _rotate_pairs(rot) * sin, rest), dim=-1)


class FusedGateUp(MergedLinear):
    """`MergedLinear` (gate, up) that also loads and reads HF's one fused tensor (shard None); each rank
    keeps its rows of each half."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TPGroup):
        super().__init__(hidden_size, {"gate": intermediate_size, "up": intermediate_size}, False, tp)

    def _shard_view(self, param: nn.Parameter, shard_id: str | None) -> torch.Tensor:
        if shard_id is not None:
            return super()._shard_view(param, shard_id)
        if self.tp.size == 1:
            return param.data
        # `WeightMap.get` concatenates the ranks' views along dim 0, but this rank's rows ([its gate rows; its
        # up rows]) are not a block of HF's [gate; up]: return that block instead, assembled from both halves
        # gathered whole (collectives, like `get` itself: every rank calls this).
        halves = [self.tp.all_gather(MergedLinear._shard_view(self, param, shard), 0, size)
                  for shard, size in self.full_sizes.items()]
        return torch.cat(halves).narrow(0, *self.tp.shard_range(sum(self.full_sizes.values())))

    def _load_shard(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        if shard_id is not None:
            super()._load_shard(param, loaded, shard_id)
            return
        total = sum(self.full_sizes.values())
        if loaded.dim() != 2 or loaded.shape[0] != total:
            raise ValueError(f"expected shape ({total}, {param.shape[1]}), got {tuple(loaded.shape)}")
        for shard, part in zip(self.full_sizes, loaded.split(list(self.full_sizes.values()))):
            super()._load_shard(param, part, shard)


class Glm4MLP(nn.Module):
    def __init__(self, hf_config, tp: TPGroup):
        super().__init__()
        self.gate_up_proj = FusedGateUp(hf_config.hidden_size, hf_config.intermediate_size, tp)
        self.down_proj = RowParallelLinear(hf_config.intermediate_size, hf_config.hidden_size, False, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class Glm4Attention(DecoderAttention):
    """`DecoderAttention` with its (partial) RoPE, and q/k norm when the spec asks (GLM-4.5's ``use_qk_norm``),
    in PyTorch: the fused kernel's full half-split RoPE is not GLM's."""

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj.split(self.qkv_proj(x))
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v, meta)
        return self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))


class Glm4DecoderLayer(nn.Module):
    def __init__(self, hf_config, spec: DecoderSpec, rotary: nn.Module, tp: TPGroup):
        super().__init__()
        self.self_attn = Glm4Attention(hf_config, spec, rotary, tp)
        self.mlp = Glm4MLP(hf_config, tp)
        eps = hf_config.rms_norm_eps
        self.input_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.post_self_attn_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.post_mlp_layernorm = RMSNorm(hf_config.hidden_size, eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """As `DecoderLayer.forward`, with each sublayer's output normed before its residual add."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_self_attn_layernorm(self.self_attn(positions, x, meta))
        x, residual = self.post_attention_layernorm(x, residual)
        return self.post_mlp_layernorm(self.mlp(x)), residual


class Glm4ForCausalLM(DecoderForCausalLM):
    # q/k/v are separate HF tensors; gate/up already arrive fused (`FusedGateUp`).
    packed_modules = {name: DecoderForCausalLM.packed_modules[name] for name in ("q_proj", "k_proj", "v_proj")}

    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"GLM4 with hidden_act={hf_config.hidden_act!r}; temper supports silu")
        return DecoderSpec(qkv_bias=bool(getattr(hf_config, "attention_bias", True)))

    @staticmethod
    def build_rotary(hf_config, max_len: int) -> nn.Module:
        rotary_dim = rotary_dim_of(hf_config)
        inv_freq = inverse_frequencies(rope_parameters(hf_config), rotary_dim, hf_config.max_position_embeddings)
        return PartialInterleavedRotary(rotary_dim, max_len, inv_freq)

    def build_layer(self, hf_config, spec: DecoderSpec, rotary: nn.Module, layer_idx: int) -> nn.Module:
        return Glm4DecoderLayer(hf_config, spec, rotary, self.tp)
