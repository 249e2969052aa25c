"""A Llama-style decoder-only transformer; Qwen3, Qwen2 and Llama are flag settings of it.

Per layer: x += o_proj(attention(rope(q, k), v)) on RMSNorm(x); x += down(silu(gate) * up) on
RMSNorm(x); then a final RMSNorm and the LM head (tied to the embedding when the config says so).
q/k/v and gate/up are fused projections internally; `packed_modules` maps HF names onto them (the one
place that knows about the fusion besides `MergedLinear`). Each residual add is done by the next
RMSNorm (`RMSNorm(x, residual)`), which is the same arithmetic as HF's order and one kernel on the
fast path; q/k norm and RoPE are one in-place kernel there too. The model sees packed tokens [T] with
their positions and an `AttentionMetadata`; it knows nothing of scheduling or devices. Architectures
whose layers or RoPE differ (Qwen3-MoE's expert blocks, GLM4's partial RoPE and extra norms) override
`DecoderForCausalLM.build_layer` / `build_rotary` and keep the rest.

Tensor parallelism (`tp`, a `TPGroup`; see `layers.py`): each rank builds the model with its share of
the attention heads (q/k/v column-parallel, o_proj row-parallel) and of the MLP (gate/up
column-parallel, down row-parallel); norms and the embedding are replicated; the LM head holds the
rank's rows of the vocabulary (tied: a view of those rows of the embedding) and `compute_logits`
all-gathers them, so every rank ends with the same full logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from temper.engine import kernels
from temper.engine.attention import AttentionMetadata, PagedAttention
from temper.engine.models.layers import (
    Embedding,
    LMHead,
    MergedLinear,
    RMSNorm,
    RowParallelLinear,
    silu_and_mul,
)
from temper.engine.models.rotary import (
    RotaryEmbedding,
    inverse_frequencies,
    rope_parameters,
)
from temper.engine.tp_group import TPGroup


@dataclass(frozen=True)
class DecoderSpec:
    """Architecture flags: which projections have biases, and whether q/k get a per-head RMSNorm."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False


def head_dim_of(hf_config) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


class DecoderAttention(nn.Module):
    def __init__(self, hf_config, spec: DecoderSpec, rotary: RotaryEmbedding, tp: TPGroup):
        super().__init__()
        self.num_heads = hf_config.num_attention_heads // tp.size  # this rank's heads
        self.num_kv_heads = hf_config.num_key_value_heads // tp.size
        self.head_dim = head_dim_of(hf_config)
        q_size = hf_config.num_attention_heads * self.head_dim
        kv_size = hf_config.num_key_value_heads * self.head_dim
        self.qkv_proj = MergedLinear(hf_config.hidden_size, {"q": q_size, "k": kv_size, "v": kv_size}, spec.qkv_bias,
                                     tp)
        self.o_proj = RowParallelLinear(q_size, hf_config.hidden_size, spec.o_bias, tp)
        if spec.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps)
        self.qk_norm = spec.qk_norm
        self.rotary = rotary  # shared by all layers; holds only non-persistent cos/sin buffers
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        fused = kernels.enabled("layers", qkv)
        kv_cache = None
        if fused:  # q/k norm and RoPE in place on the q and k columns, K/V written to the cache
            if self.attn.k_cache is not None:
                kv_cache = (self.attn.k_cache, self.attn.v_cache, meta.slot_mapping)
            kernels.module("elementwise").qk_norm_rope_(
                qkv, positions, self.q_norm.weight if self.qk_norm else None,
                self.k_norm.weight if self.qk_norm else None, self.q_norm.eps if self.qk_norm else 0.0,
                self.rotary.cos, self.rotary.sin, self.num_heads, self.num_kv_heads, self.head_dim, kv_cache,
            )
        q, k, v = self.qkv_proj.split(qkv)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if not fused:
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v, meta, kv_stored=kv_cache is not None)
        return self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))


class DecoderMLP(nn.Module):
    def __init__(self, hf_config, spec: DecoderSpec, tp: TPGroup):
        super().__init__()
        size = hf_config.intermediate_size
        self.gate_up_proj = MergedLinear(hf_config.hidden_size, {"gate": size, "up": size}, spec.mlp_bias, tp)
        self.down_proj = RowParallelLinear(size, hf_config.hidden_size, spec.mlp_bias, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    """`mlp`: the feed-forward block when it is not the dense `DecoderMLP` (a mixture of experts);
    `attention`: the attention block when it is not `DecoderAttention` (DeepSeek's latent attention)."""

    def __init__(self, hf_config, spec: DecoderSpec, rotary: RotaryEmbedding, tp: TPGroup,
                 mlp: nn.Module | None = None, attention: nn.Module | None = None):
        super().__init__()
        self.self_attn = attention if attention is not None else DecoderAttention(hf_config, spec, rotary, tp)
        self.mlp = mlp if mlp is not None else DecoderMLP(hf_config, spec, tp)
        self.input_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) -> (mlp output, residual stream before it); their sum is HF's layer output.
        The first layer gets the embeddings and residual None."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class DecoderModel(nn.Module):
    """Embedding, the layers `build_layer(0..num_hidden_layers-1)` (each shares `rotary`), final norm."""

    def __init__(self, hf_config, rotary: nn.Module, build_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.embed_tokens = Embedding(hf_config.vocab_size, hf_config.hidden_size)
        self.layers = nn.ModuleList(build_layer(i) for i in range(hf_config.num_hidden_layers))
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.rotary = rotary

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, meta)
        return self.norm(x, residual)[0]


class DecoderForCausalLM(nn.Module):
    """Base of the engine's model classes; subclasses define `spec(hf_config)`, and override
    `build_rotary` / `build_layer` where their RoPE or layers differ from the Llama layout."""

    # HF module name -> (engine module name, shard id) for projections the engine fuses.
    packed_modules: ClassVar[dict[str, tuple[str, str]]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", "gate"),
        "up_proj": ("gate_up_proj", "up"),
    }

    # Kernel groups without which a decode step cannot be captured in a CUDA graph (besides the Triton
    # attention backend, which every model needs), each entry groups of which one must be on: the MoE
    # models' experts on the device ("fused_moe" or "moe").
    CUDA_GRAPH_KERNELS: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        raise NotImplementedError

    def unused_weight(self, hf_name: str) -> bool:
        """Whether checkpoint tensor `hf_name` belongs to no part of this model and is skipped when loading."""
        return False

    @staticmethod
    def kv_cache_layout(hf_config, tp_size: int) -> tuple[int, int, int]:
        """One token's cache entry per layer on one rank: (tensors, heads, dim) -- K and V of this rank's
        K/V heads. The runner binds tensor 0 as the attention's ``k_cache`` and the last as ``v_cache``
        (one tensor: both are the same cache, as for a latent that serves as key and value)."""
        return 2, hf_config.num_key_value_heads // tp_size, head_dim_of(hf_config)

    @staticmethod
    def build_rotary(hf_config, max_len: int) -> nn.Module:
        """The RoPE tables every layer shares: `forward(positions [T], q, k) -> (q, k)` rotated."""
        inv_freq = inverse_frequencies(rope_parameters(hf_config), head_dim_of(hf_config),
                                       hf_config.max_position_embeddings)
        return RotaryEmbedding(head_dim_of(hf_config), max_len, inv_freq)

    def build_layer(self, hf_config, spec: DecoderSpec, rotary: nn.Module, layer_idx: int) -> nn.Module:
        """Decoder layer `layer_idx`: `forward(positions, x, residual, meta) -> (x, residual)` as
        `DecoderLayer`'s, with its attention at ``.self_attn.attn`` (the runner binds the KV cache there)."""
        return DecoderLayer(hf_config, spec, rotary, self.tp)

    def __init__(self, hf_config, max_len: int, tp: TPGroup | None = None):
        super().__init__()
        self.tp = tp or TPGroup()
        spec, rotary = self.spec(hf_config), self.build_rotary(hf_config, max_len)
        self.model = DecoderModel(hf_config, rotary, lambda i: self.build_layer(hf_config, spec, rotary, i))
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.vocab_size = hf_config.vocab_size
        self.vocab_rows = self.tp.shard_range(self.vocab_size)  # (start, count) of this rank's LM-head rows
        if not self.tie_word_embeddings:
            self.lm_head = LMHead(hf_config.hidden_size, self.vocab_size, self.tp)
        self.routed_experts = None  # an MoE model's RoutedExpertsCache, once the runner binds one

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """This rank's rows of the LM head [rows, hidden] (tied: a view of the embedding, no copy)."""
        if not self.tie_word_embeddings:
            return self.lm_head.weight
        weight = self.model.embed_tokens.weight
        return weight if self.tp.size == 1 else weight.narrow(0, *self.vocab_rows)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Packed tokens [T] -> final hidden states [T, hidden]."""
        if self.routed_experts is not None:  # the MoE blocks record their routing into these tokens' slots
            self.routed_experts.slots = meta.slot_mapping
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] in the model dtype (as HF computes them; the sampler upcasts),
        written into `out` when given (a CUDA graph's static buffer)."""
        if self.tp.size > 1:
            logits = self.tp.all_gather(torch.nn.functional.linear(hidden, self.lm_head_weight), -1, self.vocab_size)
            return logits.contiguous() if out is None else out.copy_(logits)
        if out is None:
            return torch.nn.functional.linear(hidden, self.lm_head_weight)
        return torch.matmul(hidden, self.lm_head_weight.t(), out=out)
