"""A sparse mixture-of-experts feed-forward block: softmax top-k routing over SwiGLU experts, no
shared expert (Qwen3-MoE's `Qwen3MoeSparseMoeBlock`; Mixtral's and Qwen2-MoE's routing is the same).

Routing, as Hugging Face computes it: router logits in the model dtype, softmax in float32, the top
`num_experts_per_tok` probabilities (renormalised to sum to 1 when ``norm_topk_prob``), cast back to
the model dtype. Each token's output is the weighted sum of its experts' outputs.

Dispatch (the PyTorch reference path, CPU and CUDA): the (token, slot) pairs are sorted by expert
once (`argsort`), then a Python loop runs over the experts that received tokens -- never over all
experts, never per token -- each gathering its tokens (`index_select`), applying its SwiGLU and
scattering the weighted result back (`index_add_`, in ascending expert order as HF does). Its trip
count and the per-expert row counts are read on the host, so this path cannot be captured in a CUDA
graph; a grouped-GEMM kernel over the same sorted layout replaces it on the GPU.

Parameters keep the checkpoint's per-expert names (``mlp.experts.{e}.gate_proj.weight`` ->
``mlp.experts.{e}.gate_up_proj``, shard "gate"; the router is ``mlp.gate.weight``). Tensor parallelism:
every rank holds every expert's share of ``moe_intermediate_size`` (gate/up column-parallel, down
row-parallel); the experts' partial outputs are summed locally and all-reduced once per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from temper.engine.models.layers import Linear, MergedLinear, RowParallelLinear, silu_and_mul
from temper.engine.tp_group import TPGroup


def softmax_topk(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> (weights [T, top_k] in the logits' dtype, expert ids [T, top_k] int64)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), ids


class Expert(nn.Module):
    """One SwiGLU expert; `forward` returns this rank's partial sum (no all-reduce)."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TPGroup):
        super().__init__()
        self.gate_up_proj = MergedLinear(hidden_size, {"gate": intermediate_size, "up": intermediate_size}, False, tp)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, False, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(silu_and_mul(self.gate_up_proj(x)), self.down_proj.weight)


class SparseMoeBlock(nn.Module):
    def __init__(self, hf_config, tp: TPGroup):
        super().__init__()
        self.tp = tp
        self.top_k = hf_config.num_experts_per_tok
        self.norm_topk_prob = bool(getattr(hf_config, "norm_topk_prob", False))
        size = hf_config.moe_intermediate_size
        if size % tp.size:
            raise ValueError(
                f"EngineArgs.tensor_parallel_size={tp.size} does not divide the model's moe_intermediate_size={size}; "
                "use a tensor_parallel_size that divides it"
            )
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"MoE experts with hidden_act={hf_config.hidden_act!r}; temper supports silu")
        self.gate = Linear(hf_config.hidden_size, hf_config.num_experts)  # the router, replicated
        self.experts = nn.ModuleList(Expert(hf_config.hidden_size, size, tp) for _ in range(hf_config.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        weights, ids = softmax_topk(self.gate(x), self.top_k, self.norm_topk_prob)
        out = dispatch(self.experts, x, weights, ids)
        return out if self.tp.size == 1 else self.tp.all_reduce(out)


def dispatch(experts: nn.ModuleList, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """sum_k weights[t, k] * experts[ids[t, k]](x[t]) for each token t: x [T, hidden], weights/ids [T, top_k]
    -> [T, hidden] in x's dtype (weighted in the weights' dtype first, as HF does), this rank's partial sum."""
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "the MoE reference path reads its per-expert token counts on the host and cannot be captured in "
            "a CUDA graph; its model class sets CUDA_GRAPHS = False so that the engine decodes it eagerly"
        )
    top_k = ids.shape[1]
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    tokens, pair_weights = order // top_k, weights.flatten()[order]
    counts = torch.bincount(flat, minlength=len(experts))
    hit = counts.nonzero().flatten()
    ends = counts.cumsum(0)[hit]
    out = torch.zeros_like(x)
    for expert, end, n in zip(hit.tolist(), ends.tolist(), counts[hit].tolist()):
        rows = tokens[end - n : end]
        y = experts[expert](x.index_select(0, rows))
        out.index_add_(0, rows, (y * pair_weights[end - n : end, None]).to(out.dtype))
    return out
