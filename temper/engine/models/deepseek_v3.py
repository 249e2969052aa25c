"""DeepSeek-V3 / R1 and Moonlight (HF `DeepseekV3ForCausalLM`): multi-head latent attention (MLA) and a
mixture of experts with shared experts and grouped sigmoid routing, as Hugging Face computes them.

Attention. Each token is compressed to a latent ``c = RMSNorm(kv_a_proj_with_mqa(x)[:kv_lora_rank])``
plus one rotary key ``k_rope`` (the last ``qk_rope_head_dim`` columns, shared by every head). HF expands
the latent per head, ``[k_nope; v] = kv_b_proj(c)``, and attends with keys ``[k_nope, k_rope]``. The
engine attends in the latent space instead (the "absorbed" form of the DeepSeek-V2 paper): with
``W_UK`` / ``W_UV`` the key and value rows of ``kv_b_proj`` for head h,
``q_nope . k_nope = (W_UK^T q_nope) . c`` and ``p @ v = W_UV (p @ c)``, so every head attends to the
same single-head entry ``[c, k_rope]`` (kv_lora_rank + qk_rope_head_dim values per token) with the
query ``[W_UK^T q_nope, q_rope]``, and the value is the entry itself (its rope columns are dropped from
the output before ``W_UV``). That entry is all the paged cache holds (`kv_cache_layout`: one tensor,
one head); the reference attention backend serves it as multi-query attention, prefix caching
included. The same arithmetic as HF's up to the order of the sums; the softmax scale is
``qk_head_dim ** -0.5`` either way (with YaRN RoPE, times ``mscale(factor, mscale_all_dim) ** 2``). q is
``q_proj(x)``, or ``q_b_proj(RMSNorm(q_a_proj(x)))`` with a ``q_lora_rank``; the two latent norms use
eps 1e-6 (HF's and DeepSeek's default), not ``rms_norm_eps``.

RoPE covers the ``qk_rope_head_dim`` columns only: default, linear, llama3 or YaRN (DeepSeek-V3's: factor
40 over 4096 original positions), as HF computes them. With ``rope_interleave`` (true in DeepSeek's
checkpoints) the pairs are (2i, 2i+1): HF gathers the even then the odd columns and rotates the halves;
the engine does the same, so q and k share that column order in the cache.

Experts. Layers ``first_k_dense_replace`` and up replace the MLP with `DeepseekMoE`: the router
(``mlp.gate``, float32 weight and ``e_score_correction_bias``) scores experts with a sigmoid; the
bias only chooses -- the top 2 biased scores of each of ``n_group`` groups rank the groups, the best
``topk_group`` groups stay, and the top ``num_experts_per_tok`` biased scores among their experts are
picked -- while the weights are the unbiased scores, renormalised when ``norm_topk_prob`` and
multiplied by ``routed_scaling_factor``. ``n_shared_experts`` always-on experts are one SwiGLU MLP of
``n_shared_experts * moe_intermediate_size`` (``mlp.shared_experts``) added to the routed sum. The
routed experts are `moe.GroupedExperts` (stacked weights loaded by their per-expert names,
``mlp.experts.{e}.gate_proj.weight``; the grouped-GEMM path on CUDA, see `moe.py`).

Fast paths: the class says ``ATTENTION_KERNEL = "latent"``, so on CUDA the runner serves the attention
with `kernels.latent_attention.TritonLatentAttention` when it passes its self-check (kernel group
"attention"): the entry write, a causal prefill kernel and a split-K decode kernel, both reading each cache
tile once for a block of heads (prefill: of tokens x heads). The router's choice after its logits is one
launch where group "routing" is on (`kernels.routing.sigmoid_topk`), the routed experts the fused Triton
kernels ("fused_moe") or grouped GEMMs ("moe"); with either experts group, decode steps replay from CUDA
graphs. Where group "layers" is on, the glue between the attention's GEMMs (RoPE with its interleave,
kv_a_layernorm, the query's and the entry's concatenations: ~20 launches a layer) is one
`kernels.latent_prep` launch, and the W_UK / W_UV products are batched GEMMs over strided views, without
einsum's copies. Tensor parallelism: heads are split (q, kv_b column-parallel, o_proj
row-parallel); the latent projections, the router and the cache entry are replicated; experts as in
`moe.py`. Not supported: DeepSeek-V3's FP8 block-quantised checkpoint (``weight_scale_inv``
tensors; a BF16 conversion loads) and its multi-token-prediction layer (skipped when loading).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from temper.engine import kernels
from temper.engine.attention import AttentionMetadata, PagedAttention
from temper.engine.models.decoder import DecoderForCausalLM, DecoderLayer, DecoderSpec
from temper.engine.models.layers import (
    ColumnParallelLinear,
    Linear,
    RMSNorm,
    RowParallelLinear,
    engine_param,
)
from temper.engine.models.moe import Expert, GroupedExperts, record_routing
from temper.engine.models.rotary import (
    RotaryEmbedding,
    inverse_frequencies,
    rope_parameters,
    yarn_mscale,
    yarn_parameters,
)
from temper.engine.tp_group import TPGroup

LATENT_NORM_EPS = 1e-6  # q_a_layernorm and kv_a_layernorm: HF builds them with RMSNorm's default eps


class LatentRotary(nn.Module):
    """RoPE over the rope columns [T, H, qk_rope_head_dim] of q and of the shared key; with `interleave`
    the even columns are moved before the odd ones first (HF's `apply_rotary_pos_emb_interleave`)."""

    def __init__(self, rope_dim: int, max_len: int, inv_freq: torch.Tensor, interleave: bool,
                 attention_factor: float = 1.0):
        super().__init__()
        self.rope = RotaryEmbedding(rope_dim, max_len, inv_freq, attention_factor)
        self.interleave = interleave

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.interleave:
            q = torch.cat((q[..., 0::2], q[..., 1::2]), dim=-1)
            k = torch.cat((k[..., 0::2], k[..., 1::2]), dim=-1)
        return self.rope(positions, q, k)


class LatentAttention(nn.Module):
    """Multi-head latent attention over a cache of [c, k_rope] entries (see the module docstring)."""

    def __init__(self, hf_config, rotary: LatentRotary, tp: TPGroup):
        super().__init__()
        heads, hidden = hf_config.num_attention_heads, hf_config.hidden_size
        self.num_heads = heads // tp.size
        self.nope_dim, self.rope_dim = hf_config.qk_nope_head_dim, hf_config.qk_rope_head_dim
        self.v_dim, self.rank = hf_config.v_head_dim, hf_config.kv_lora_rank
        bias = bool(getattr(hf_config, "attention_bias", False))
        q_size = heads * (self.nope_dim + self.rope_dim)
        self.q_lora_rank = hf_config.q_lora_rank
        if self.q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(hidden, q_size, tp)
        else:
            self.q_a_proj = Linear(hidden, self.q_lora_rank, bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = ColumnParallelLinear(self.q_lora_rank, q_size, tp)
        self.kv_a_proj_with_mqa = Linear(hidden, self.rank + self.rope_dim, bias)
        self.kv_a_layernorm = RMSNorm(self.rank, LATENT_NORM_EPS)
        self.kv_b_proj = ColumnParallelLinear(self.rank, heads * (self.nope_dim + self.v_dim), tp)
        self.o_proj = RowParallelLinear(heads * self.v_dim, hidden, bias, tp)
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, 1, self.rank + self.rope_dim, softmax_scale(hf_config))

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]. Where kernel group "layers" is on, `kernels.latent_prep` builds the
        query and the entry in one launch and the W_UK / W_UV products are batched GEMMs over strided views
        (`_forward_fused`); the same numbers up to rounding (see `latent_prep`)."""
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(-1, self.num_heads, self.nope_dim + self.rope_dim)
        kv = self.kv_a_proj_with_mqa(x)
        w_uk, w_uv = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.rank).split(
            [self.nope_dim, self.v_dim], dim=1)
        if kernels.enabled("layers", x):
            return self._forward_fused(positions, q, kv, w_uk, w_uv, meta)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        c, k_rope = kv.split([self.rank, self.rope_dim], dim=-1)
        q_rope, k_rope = self.rotary(positions, q_rope, k_rope[:, None, :])
        entry = torch.cat((self.kv_a_layernorm(c)[:, None, :], k_rope), dim=-1)  # [T, 1, rank + rope]
        q_latent = torch.einsum("thn,hnr->thr", q_nope, w_uk)
        # the backend writes the entry (key and value at once) and returns at least its first `rank` columns
        out = self.attn(torch.cat((q_latent, q_rope), dim=-1), entry, entry, meta)
        out = torch.einsum("thr,hvr->thv", out[..., : self.rank], w_uv)
        return self.o_proj(out.reshape(-1, self.num_heads * self.v_dim))

    def _forward_fused(self, positions: torch.Tensor, q: torch.Tensor, kv: torch.Tensor, w_uk: torch.Tensor,
                       w_uv: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """`forward` in three launches besides the projections and the attention: bmm, latent_prep, bmm.
        torch.bmm takes the strided [H, T, *] views as they are (cuBLAS: a row stride and a batch stride; the
        CPU's bmm copies them, which only the CPU tests pay), and its W_UV product is written straight into
        o_proj's input [T, H * v] seen as [H, T, v], where the reference's einsum output is permuted and
        reshaped (a copy)."""
        q_latent = torch.bmm(q[..., : self.nope_dim].transpose(0, 1), w_uk)  # [H, T, rank]
        rope = self.rotary.rope
        query, entry = kernels.module("latent_prep").latent_prep(
            q, q_latent.transpose(0, 1), kv, positions, rope.cos, rope.sin, self.kv_a_layernorm.weight,
            self.kv_a_layernorm.eps, self.rotary.interleave)
        out = self.attn(query, entry, entry, meta)
        values = torch.empty(q.shape[0], self.num_heads * self.v_dim, dtype=q.dtype, device=q.device)
        torch.bmm(out[..., : self.rank].transpose(0, 1), w_uv.transpose(1, 2),
                  out=values.view(-1, self.num_heads, self.v_dim).transpose(0, 1))
        return self.o_proj(values)


def softmax_scale(hf_config) -> float:
    """qk_head_dim ** -0.5, times YaRN's mscale(factor, mscale_all_dim) squared under scaled RoPE (DeepSeek's
    reference code and HF's `yarn_apply_mscale`: the non-rotary dims are scaled too)."""
    scale = (hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim) ** -0.5
    params = rope_parameters(hf_config)
    if params["rope_type"] != "default" and params.get("mscale_all_dim"):
        scale *= yarn_mscale(params["factor"], params["mscale_all_dim"]) ** 2
    return scale


def grouped_topk(logits: torch.Tensor, bias: torch.Tensor, top_k: int, num_groups: int, topk_groups: int,
                 renormalize: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's routing (noaux_tc): router logits [T, E] float32 and the choice bias [E] ->
    (weights [T, top_k] float32, expert ids [T, top_k] int64); see the module docstring."""
    scores = logits.sigmoid()
    choice = scores + bias
    num_tokens, num_experts = choice.shape
    if topk_groups < num_groups:  # else every group stays (Moonlight: one group), and masking is a no-op
        group_scores = choice.view(num_tokens, num_groups, -1).topk(2, dim=-1)[0].sum(dim=-1)  # [T, G]
        groups = group_scores.topk(topk_groups, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
        keep = keep[:, :, None].expand(-1, -1, num_experts // num_groups).reshape(num_tokens, num_experts)
        choice = choice.masked_fill(~keep, float("-inf"))
    ids = choice.topk(top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scale, ids


class TopkRouter(nn.Module):
    """``mlp.gate``: float32 weight [E, hidden] and ``e_score_correction_bias`` [E], as HF keeps them."""

    def __init__(self, hf_config):
        super().__init__()
        num_experts = hf_config.n_routed_experts
        self.weight = engine_param(num_experts, hf_config.hidden_size)
        self.e_score_correction_bias = engine_param(num_experts)
        for param in (self.weight, self.e_score_correction_bias):
            param.data = param.data.float()
        self.top_k, self.scale = hf_config.num_experts_per_tok, hf_config.routed_scaling_factor
        self.num_groups, self.topk_groups = hf_config.n_group, hf_config.topk_group
        self.renormalize = bool(hf_config.norm_topk_prob)
        if num_experts % self.num_groups or num_experts // self.num_groups < 2:
            raise ValueError(f"DeepSeek-V3 routing needs n_group={self.num_groups} to divide n_routed_experts="
                             f"{num_experts} into groups of at least 2 experts (config.json)")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (weights [T, top_k] float32, expert ids [T, top_k] int64): `grouped_topk`, or
        its one-launch kernel (`kernels.routing.sigmoid_topk`) where kernel group "routing" is on."""
        logits = F.linear(x.float(), self.weight)
        if kernels.enabled("routing", x):
            return kernels.module("routing").sigmoid_topk(
                logits, self.e_score_correction_bias, self.top_k, self.num_groups, self.topk_groups,
                self.renormalize, self.scale)
        return grouped_topk(logits, self.e_score_correction_bias, self.top_k, self.num_groups, self.topk_groups,
                            self.renormalize, self.scale)


class DeepseekMoE(nn.Module):
    def __init__(self, hf_config, tp: TPGroup):
        super().__init__()
        self.tp = tp
        size, hidden = hf_config.moe_intermediate_size, hf_config.hidden_size
        shared = size * hf_config.n_shared_experts
        if size % tp.size or shared % tp.size:
            raise ValueError(
                f"EngineArgs.tensor_parallel_size={tp.size} does not divide the model's moe_intermediate_size={size} "
                f"(or its shared experts' {shared}); use a tensor_parallel_size that divides it"
            )
        self.gate = TopkRouter(hf_config)
        self.experts = GroupedExperts(hf_config.n_routed_experts, hidden, size, hf_config.num_experts_per_tok, tp)
        self.shared_experts = Expert(hidden, shared, tp)
        self.routed_experts = None  # (RoutedExpertsCache, layer index) once the runner binds one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        weights, ids = self.gate(x)
        record_routing(self, ids)
        out = self.experts(x, weights, ids) + self.shared_experts(x)
        return out if self.tp.size == 1 else self.tp.all_reduce(out)


class DeepseekV3ForCausalLM(DecoderForCausalLM):
    CUDA_GRAPH_KERNELS = (("fused_moe", "moe"),)  # the experts' reference dispatch reads its token counts on the host
    ATTENTION_KERNEL = "latent"  # the runner's Triton attention backend: kernels.latent_attention's
    # q/k/v are not fused here (q_proj is MLA's own projection); gate/up are, in every MLP and expert.
    packed_modules = {name: DecoderForCausalLM.packed_modules[name] for name in ("gate_proj", "up_proj")}

    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"DeepSeek-V3 with hidden_act={hf_config.hidden_act!r}; temper supports silu")
        return DecoderSpec()

    def unused_weight(self, hf_name: str) -> bool:
        """The multi-token-prediction layers (``num_nextn_predict_layers``), stored after the others as
        ``model.layers.{num_hidden_layers + i}.*``: a draft model for speculative decoding, not served."""
        layer = re.match(r"model\.layers\.(\d+)\.", hf_name)
        return layer is not None and int(layer[1]) >= len(self.model.layers)

    @staticmethod
    def kv_cache_layout(hf_config, tp_size: int) -> tuple[int, int, int]:
        """One latent entry [c, k_rope] per token and layer, the same on every rank."""
        return 1, 1, hf_config.kv_lora_rank + hf_config.qk_rope_head_dim

    @staticmethod
    def build_rotary(hf_config, max_len: int) -> nn.Module:
        rope_dim, params = hf_config.qk_rope_head_dim, rope_parameters(hf_config)
        if params["rope_type"] == "yarn":
            inv_freq, factor = yarn_parameters(params, rope_dim, hf_config.max_position_embeddings)
        else:
            inv_freq, factor = inverse_frequencies(params, rope_dim, hf_config.max_position_embeddings), 1.0
        return LatentRotary(rope_dim, max_len, inv_freq, bool(getattr(hf_config, "rope_interleave", True)), factor)

    def build_layer(self, hf_config, spec: DecoderSpec, rotary: nn.Module, layer_idx: int) -> nn.Module:
        sparse = layer_idx >= hf_config.first_k_dense_replace
        mlp = DeepseekMoE(hf_config, self.tp) if sparse else None
        return DecoderLayer(hf_config, spec, rotary, self.tp, mlp=mlp, attention=LatentAttention(hf_config, rotary,
                                                                                                 self.tp))
