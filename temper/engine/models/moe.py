"""A sparse mixture-of-experts feed-forward block: softmax top-k routing over SwiGLU experts, no
shared expert (Qwen3-MoE's `Qwen3MoeSparseMoeBlock`; Mixtral's and Qwen2-MoE's routing is the same).

Routing, as Hugging Face computes it: router logits in the model dtype, softmax in float32, the top
`num_experts_per_tok` probabilities (renormalised to sum to 1 when ``norm_topk_prob``), cast back to
the model dtype (`softmax_topk`; after the logits, one Triton launch where kernel group "routing" is on:
`kernels.routing.softmax_topk`). Each token's output is the weighted sum of its experts' outputs, added in
ascending expert order (HF's order, which decides the rounding in bf16).

The experts' weights are stacked (`GroupedExperts`): ``gate_up_proj.weight`` [E, 2 x I, hidden] and
``down_proj.weight`` [E, hidden, I]. Three dispatch paths compute the same sum over them; `GroupedExperts`
takes the first whose kernel group is on (`kernels`: the start-up self-check decides, on CUDA):

- kernel group "fused_moe" (`kernels/fused_moe.py`, Triton): the pairs aligned by expert on the device,
  then one kernel for gate/up with SiLU-and-multiply in its epilogue (rows gathered from x by token),
  one for down times the routing weight, one for each token's sum in ascending expert order; no host
  reads, capturable in a CUDA graph, any expert sizes. ``EngineArgs.moe_kernel="grouped_mm"`` leaves it
  off (an A/B against the next path).
- kernel group "moe", `dispatch_grouped`: the same sorted layout as two grouped GEMMs
  (``torch._grouped_mm``: gate/up over every expert's rows at once, then down), the per-expert offsets
  computed on the device (a ``searchsorted`` over the sorted ids), no host reads and shapes that depend
  on the token count only, so a decode step with it can be captured in a CUDA graph. Its rows must be
  16-byte aligned (`grouped_gemm_fits`); a model whose sizes are not runs the loop.
- `dispatch_loop`, the PyTorch reference (CPU and CUDA): the (token, slot) pairs are sorted by expert
  once, then a Python loop runs over the experts that received tokens -- never over all experts, never
  per token -- each gathering its tokens, applying its SwiGLU and adding the weighted result back. Its
  trip count and per-expert row counts are read on the host, so it cannot be captured in a CUDA graph.

All three round where `dispatch_loop` rounds (the GEMM outputs, silu, its product with up, the weighted
output, each add), so in bf16 they differ only where a GEMM's summation order moves a value across a
rounding boundary.

Weights keep the checkpoint's per-expert names: `WeightMap` resolves ``mlp.experts.{e}.gate_proj.weight``
to the stacked ``mlp.experts.gate_up_proj.weight`` with shard id (e, "gate") (the expert index moves into
the shard id of any parameter that carries ``num_stacked``), and loads, updates and reads each expert's
rows in place. The router is ``mlp.gate.weight``. Tensor parallelism: every rank holds every expert's
share of ``moe_intermediate_size`` (gate/up column-parallel, down row-parallel); the experts' partial
outputs are summed locally and all-reduced once per block. Each block records its routing for the
requests that ask (`record_routing`, `routed_experts.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from temper.engine import kernels
from temper.engine.models.layers import (
    Linear,
    MergedLinear,
    RowParallelLinear,
    copy_checked,
    engine_param,
    mark_view_copy,
    rank_slice,
    silu_and_mul,
)
from temper.engine.tp_group import TPGroup


def softmax_topk(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] -> (weights [T, top_k] in the logits' dtype, expert ids [T, top_k] int64)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), ids


class Expert(nn.Module):
    """One SwiGLU MLP whose `forward` returns this rank's partial sum (no all-reduce): DeepSeek's shared
    experts, summed with the routed ones before the block's one all-reduce."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TPGroup):
        super().__init__()
        self.gate_up_proj = MergedLinear(hidden_size, {"gate": intermediate_size, "up": intermediate_size}, False, tp)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, False, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(silu_and_mul(self.gate_up_proj(x)), self.down_proj.weight)


class StackedWeight(nn.Module):
    """One projection of every expert: ``weight`` [E, rows, columns] (this rank's part), loaded per expert.

    `shard_sizes`: the full (HF) output rows of each shard stacked in an expert's rows (gate/up; ``{None:
    rows}`` for one). Column-parallel: each rank holds its rows of every shard; `row_parallel`: its
    columns of `in_features` instead. A shard id is (expert, shard) (`WeightMap` builds it).
    """

    def __init__(self, num_experts: int, in_features: int, shard_sizes: dict, tp: TPGroup, row_parallel: bool = False):
        super().__init__()
        self.tp, self.num_experts, self.row_parallel = tp, num_experts, row_parallel
        self.full_sizes = dict(shard_sizes)
        self.offsets: dict = {}
        offset = 0
        for shard_id, size in shard_sizes.items():
            local = size if row_parallel else size // tp.size
            self.offsets[shard_id] = (offset, local)
            offset += local
        self.in_features = in_features
        self.weight = engine_param(num_experts, offset, in_features // tp.size if row_parallel else in_features)
        self.weight.weight_loader, self.weight.shard_view = self._load, self._view
        self.weight.tp_dim = 1 if row_parallel else 0  # of one expert's view, which `get` gathers
        self.weight.num_stacked = num_experts
        if row_parallel:
            self.weight.tp_full = in_features
        if tp.size == 1:  # an expert's HF tensor is one block of the parameter: a weight update may batch it
            mark_view_copy(self.weight)

    def _view(self, param: nn.Parameter, shard_id) -> torch.Tensor:
        if not (isinstance(shard_id, tuple) and len(shard_id) == 2 and shard_id[1] in self.offsets):
            raise ValueError(f"stacked expert weight takes shard ids (expert, one of {list(self.offsets)}); "
                             f"got {shard_id!r}")
        expert, shard = shard_id
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} out of range: the model has {self.num_experts} experts")
        offset, size = self.offsets[shard]
        return param.data[expert].narrow(0, offset, size)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id) -> None:
        view = self._view(param, shard_id)
        dim = 1 if self.row_parallel else 0
        full = self.in_features if self.row_parallel else self.full_sizes[shard_id[1]]
        copy_checked(view, rank_slice(loaded, tuple(view.shape), dim, self.tp, full))


class GroupedExperts(nn.Module):
    """E SwiGLU experts of `intermediate_size` (full; this rank holds its share), stacked; each token goes
    to `top_k` of them (the block's router picks which)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, top_k: int, tp: TPGroup):
        super().__init__()
        self.num_experts, self.hidden_size, self.top_k = num_experts, hidden_size, top_k
        halves = {"gate": intermediate_size, "up": intermediate_size}
        self.gate_up_proj = StackedWeight(num_experts, hidden_size, halves, tp)
        self.down_proj = StackedWeight(num_experts, intermediate_size, {None: hidden_size}, tp, row_parallel=True)
        self.local_size = intermediate_size // tp.size

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [T, hidden], weights/ids [T, top_k] -> [T, hidden], this rank's partial sum."""
        w_gate_up, w_down = self.gate_up_proj.weight, self.down_proj.weight
        if kernels.enabled("fused_moe", x):
            return kernels.module("fused_moe").fused_experts(w_gate_up, w_down, x, weights, ids)
        if kernels.enabled("moe", x) and grouped_gemm_fits(self.hidden_size, self.local_size, x.dtype):
            return dispatch_grouped(w_gate_up, w_down, x, weights, ids)
        return dispatch_loop(w_gate_up, w_down, x, weights, ids)


def grouped_gemm_fits(hidden_size: int, intermediate_size: int, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` takes these expert sizes: every operand's rows 16-byte aligned."""
    return all(n * dtype.itemsize % 16 == 0 for n in (hidden_size, intermediate_size))


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
        # EngineArgs.moe_router_dtype "float32": the trainer's --moe-router-dtype fp32 (logits, softmax, top-k and
        # the weights in float32); else HF's router: logits in the model's dtype, softmax in float32, weights cast back
        self.router_fp32 = getattr(hf_config, "temper_moe_router_dtype", None) == "float32"
        self.experts = GroupedExperts(hf_config.num_experts, hf_config.hidden_size, size, self.top_k, tp)
        self.routed_experts = None  # (RoutedExpertsCache, layer index) once the runner binds one

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (weights [T, top_k], expert ids [T, top_k])."""
        logits = F.linear(x.float(), self.gate.weight.float()) if self.router_fp32 else self.gate(x)
        if kernels.enabled("routing", x):  # the same, in one launch (kernels/routing.py)
            return kernels.module("routing").softmax_topk(logits, self.top_k, self.norm_topk_prob)
        return softmax_topk(logits, self.top_k, self.norm_topk_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        weights, ids = self.route(x)
        record_routing(self, ids)
        out = self.experts(x, weights, ids)
        return out if self.tp.size == 1 else self.tp.all_reduce(out)


def record_routing(block: nn.Module, ids: torch.Tensor) -> None:
    """An MoE block's top-k expert ids [T, top_k] into its `RoutedExpertsCache` (``block.routed_experts``:
    the cache and the block's layer index, bound by the runner), if it has one."""
    if block.routed_experts is not None:
        cache, layer = block.routed_experts
        cache.record(layer, ids)


def expert_swiglu(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One expert on its rows: x [n, hidden], w_gate_up [2I, hidden], w_down [hidden, I] -> [n, hidden]."""
    return F.linear(silu_and_mul(F.linear(x, w_gate_up)), w_down)


def dispatch_loop(w_gate_up: torch.Tensor, w_down: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) for each token t: stacked weights w_gate_up
    [E, 2I, hidden] and w_down [E, hidden, I], x [T, hidden], weights/ids [T, top_k] -> [T, hidden] in x's
    dtype (weighted in the weights' dtype first, as HF does); the reference path (module docstring)."""
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "the MoE reference path reads its per-expert token counts on the host and cannot be captured in "
            "a CUDA graph; the runner captures an MoE model only with kernel group 'fused_moe' or 'moe' on"
        )
    top_k = ids.shape[1]
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
    tokens, pair_weights = order // top_k, weights.flatten()[order]
    counts = torch.bincount(flat, minlength=w_gate_up.shape[0])
    hit = counts.nonzero().flatten()
    ends = counts.cumsum(0)[hit]
    out = torch.zeros_like(x)
    for expert, end, n in zip(hit.tolist(), ends.tolist(), counts[hit].tolist()):
        rows = tokens[end - n : end]
        y = expert_swiglu(x.index_select(0, rows), w_gate_up[expert], w_down[expert])
        out.index_add_(0, rows, (y * pair_weights[end - n : end, None]).to(out.dtype))
    return out


def dispatch_grouped(w_gate_up: torch.Tensor, w_down: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
                     ids: torch.Tensor) -> torch.Tensor:
    """`dispatch_loop`'s sum as two grouped GEMMs over the pairs sorted by expert, with no host reads.

    Each token's slots are first ordered by expert id, so that its weighted outputs are added in HF's
    (ascending expert) order; the adds are a loop over the top_k slots, not over experts.
    """
    num_tokens, top_k = ids.shape
    ids, slots = ids.sort(dim=1)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    experts = torch.arange(w_gate_up.shape[0], device=ids.device, dtype=flat.dtype)
    offsets = torch.searchsorted(flat[order], experts, right=True).to(torch.int32)  # end row of each expert
    rows = x.index_select(0, order // top_k)
    hidden = silu_and_mul(torch._grouped_mm(rows, w_gate_up.transpose(1, 2), offs=offsets))
    y = torch._grouped_mm(hidden, w_down.transpose(1, 2), offs=offsets)
    y = (y * weights.gather(1, slots).flatten()[order, None]).to(x.dtype)
    per_slot = torch.empty_like(y).index_copy_(0, order, y).view(num_tokens, top_k, -1)
    out = per_slot[:, 0]
    for k in range(1, top_k):
        out = out + per_slot[:, k]
    return out
