"""MoE routers after their logits (kernel group "routing"): the expert choice and its weights in one launch.

Each router is ~10 small PyTorch ops per layer (sigmoid, bias add, group mask, top-k, gather, sum, divide,
scale); here one program holds a few tokens' rows of E <= `MAX_EXPERTS` logits in registers (one row when
decoding a single sequence) and writes their top-k weights and expert ids. The router's float32 GEMV stays
a separate ``F.linear`` before it.

- `sigmoid_topk`: DeepSeek-V3's noaux_tc routing as `deepseek_v3.grouped_topk` (HF's `DeepseekV3TopkRouter`)
  computes it: scores = sigmoid(logits), choice = scores + bias; with topk_groups < num_groups each group is
  ranked by the sum of its two best choice values and all but the best topk_groups groups are masked out;
  the top_k best choice values pick the experts, weighed by their unbiased scores, renormalised
  (w / (sum w + 1e-20)) and times the routed scaling factor.
- `softmax_topk`: `moe.softmax_topk` (HF's Qwen3-MoE router): softmax in float32, the top_k probabilities,
  renormalised (w / sum w), rounded to the output dtype.

Top-k is k rounds of "the largest remaining value, its lowest index on ties, then mask it" (the groups the
same way), so the ids come in descending order of the value that chose them. torch.topk does not promise
which of tied values it keeps (ties need equal float32 values: saturated sigmoids with equal biases, or
logits equal after rounding); lowest index first is what its CPU kernel does in practice. Callers do not
depend on the ids' order within a row, only on weights[t, j] belonging to ids[t, j].

Rounding: on the GPU exp is libdevice's expf and the divisions are IEEE (div_rn), what PyTorch's CUDA
sigmoid (1 / (1 + expf(-x))) and softmax (expf(x - max) / sum) compute, so the sigmoid scores should equal
the reference's bit for bit and the softmax's differ only through the order of its sum (expected from the
source, not measured: the GPU tests check the picks and the weights to 1e-6); the weights' sums over k add
in another order, so weights agree to a few float32 ulps. The interpreter (CPU tests) uses numpy's exp. A row
with NaN logits gets in-range but arbitrary ids (as the reference's would be meaningless too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from temper.engine.kernels.common import INTERPRET, next_pow2, round_code, round_to

MAX_EXPERTS = 512  # one row in one block of registers
TILE_ELEMENTS = 1024
NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _exp(x):
    if INTERPRET:
        return tl.exp(x)
    else:
        return libdevice.exp(x)


@triton.jit
def _div(a, b):
    if INTERPRET:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _keep_best_groups(choice, lanes, group_size, num_groups, topk_groups, BLOCK_T: tl.constexpr,
                      BLOCK_E: tl.constexpr):
    """`choice` [rows, BLOCK_E] with every expert outside its row's topk_groups best groups set to -inf; a
    group's rank is the sum of its two largest choice values (the larger one counted once, even if tied)."""
    group = lanes // group_size  # [1, BLOCK_E]; padding lanes lie past the last group
    ranked = tl.full([BLOCK_T, BLOCK_E], NEG_INF, tl.float32)  # each expert's group score
    for g in range(num_groups):
        inside = group == g
        top1 = tl.max(tl.where(inside, choice, NEG_INF), 1)[:, None]
        first = tl.min(tl.where(inside & (choice == top1), lanes, BLOCK_E), 1)[:, None]
        top2 = tl.max(tl.where(inside & (lanes != first), choice, NEG_INF), 1)[:, None]
        ranked = tl.where(inside, top1 + top2, ranked)
    keep = tl.zeros([BLOCK_T, BLOCK_E], tl.int32) != 0
    for _ in range(topk_groups):
        best = tl.max(ranked, 1)[:, None]
        chosen = tl.min(tl.where(ranked == best, group, num_groups), 1)[:, None]
        keep = keep | (group == chosen)
        ranked = tl.where(group == chosen, NEG_INF, ranked)
    return tl.where(keep, choice, NEG_INF)


@triton.jit
def _top_k(choice, values, lanes, num_experts, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per row of `choice` [BLOCK_T, BLOCK_E] its TOP_K largest (lowest index first on ties; a -inf lane
    never beats a finite one) -> (values there [BLOCK_T, BLOCK_K] float32, their ids int32), slots past
    TOP_K zero."""
    slots = tl.arange(0, BLOCK_K)[None, :]
    picked = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)
    ids = tl.zeros([BLOCK_T, BLOCK_K], tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(choice, 1)[:, None]
        # a NaN row matches no lane: clamp to a valid expert rather than index past the experts
        i = tl.minimum(tl.min(tl.where(choice == best, lanes, num_experts), 1), num_experts - 1)[:, None]
        picked = tl.where(slots == j, tl.sum(tl.where(lanes == i, values, 0.0), 1)[:, None], picked)
        ids = tl.where(slots == j, i, ids)
        choice = tl.where(lanes == i, NEG_INF, choice)
    return picked, ids


@triton.jit
def _load_rows(logits_ptr, stride_t, num_tokens, num_experts, other, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """This program's rows [BLOCK_T, BLOCK_E] in float32 (lanes past E: `other`; rows past T: zeros), their
    token indices [BLOCK_T, 1] and the lanes [1, BLOCK_E]."""
    rows = (tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T))[:, None]
    lanes = tl.arange(0, BLOCK_E)[None, :]
    x = tl.load(logits_ptr + rows * stride_t + lanes, mask=(rows < num_tokens) & (lanes < num_experts), other=0.0)
    return tl.where(lanes < num_experts, x.to(tl.float32), other), rows, lanes


@triton.jit
def _store_rows(weights_ptr, ids_ptr, weights, ids, rows, num_tokens, TOP_K: tl.constexpr, BLOCK_K: tl.constexpr):
    slots = tl.arange(0, BLOCK_K)[None, :]
    mask = (rows < num_tokens) & (slots < TOP_K)
    tl.store(weights_ptr + rows * TOP_K + slots, weights, mask=mask)
    tl.store(ids_ptr + rows * TOP_K + slots, ids.to(tl.int64), mask=mask)


@triton.jit
def _sigmoid_topk_kernel(logits_ptr, bias_ptr, weights_ptr, ids_ptr, stride_t, num_tokens, num_experts, group_size,
                         num_groups, topk_groups, scale, renormalize, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr,
                         BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, GROUPED: tl.constexpr):
    x, rows, lanes = _load_rows(logits_ptr, stride_t, num_tokens, num_experts, 0.0, BLOCK_T, BLOCK_E)
    scores = _div(1.0, 1.0 + _exp(-x))  # PyTorch's sigmoid: 1 / (1 + exp(-x))
    bias = tl.load(bias_ptr + lanes, mask=lanes < num_experts, other=0.0)
    choice = tl.where(lanes < num_experts, scores + bias, NEG_INF)
    if GROUPED:
        choice = _keep_best_groups(choice, lanes, group_size, num_groups, topk_groups, BLOCK_T, BLOCK_E)
    weights, ids = _top_k(choice, scores, lanes, num_experts, TOP_K, BLOCK_T, BLOCK_K)
    if renormalize != 0:
        weights = _div(weights, tl.sum(weights, 1)[:, None] + 1e-20)
    _store_rows(weights_ptr, ids_ptr, weights * scale, ids, rows, num_tokens, TOP_K, BLOCK_K)


@triton.jit
def _softmax_topk_kernel(logits_ptr, weights_ptr, ids_ptr, stride_t, num_tokens, num_experts, renormalize,
                         TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                         ROUND: tl.constexpr):
    x, rows, lanes = _load_rows(logits_ptr, stride_t, num_tokens, num_experts, NEG_INF, BLOCK_T, BLOCK_E)
    e = _exp(x - tl.max(x, 1)[:, None])
    probs = _div(e, tl.sum(e, 1)[:, None])
    weights, ids = _top_k(tl.where(lanes < num_experts, probs, NEG_INF), probs, lanes, num_experts, TOP_K, BLOCK_T,
                          BLOCK_K)
    if renormalize != 0:
        weights = _div(weights, tl.sum(weights, 1)[:, None])
    _store_rows(weights_ptr, ids_ptr, round_to(weights, ROUND), ids, rows, num_tokens, TOP_K, BLOCK_K)


def _outputs(logits: torch.Tensor, top_k: int, dtype: torch.dtype, choices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (weights, ids) [T, top_k], after checking what the kernels serve."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"router logits must be [T, E] with contiguous rows, got shape {tuple(logits.shape)} "
                         f"strides {logits.stride()}")
    num_experts = logits.shape[1]
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"the routing kernels hold at most {MAX_EXPERTS} experts in a row, not {num_experts}")
    if not 1 <= top_k <= choices:
        raise ValueError(f"top_k={top_k} must be between 1 and the {choices} experts it can choose from")
    tokens = logits.shape[0]
    return (torch.empty(tokens, top_k, dtype=dtype, device=logits.device),
            torch.empty(tokens, top_k, dtype=torch.int64, device=logits.device))


def _launch(num_tokens: int, num_experts: int) -> dict:
    """Tokens per program and warps: up to `TILE_ELEMENTS` logits per program (so T = 1 runs one row in one
    warp, which reduces by shuffles alone); untuned."""
    block_e = next_pow2(num_experts)
    block_t = min(next_pow2(num_tokens), max(1, TILE_ELEMENTS // block_e))
    return dict(grid=(triton.cdiv(num_tokens, block_t),), BLOCK_T=block_t, BLOCK_E=block_e,
                num_warps=min(4, max(1, block_t * block_e // 256)))


def sigmoid_topk(logits: torch.Tensor, bias: torch.Tensor, top_k: int, num_groups: int, topk_groups: int,
                 renormalize: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's routing (module docstring): logits [T, E] float32, bias [E] float32 -> (weights
    [T, top_k] float32, expert ids [T, top_k] int64), as `deepseek_v3.grouped_topk` with the same arguments."""
    num_experts = logits.shape[-1]
    if logits.dtype != torch.float32 or bias.dtype != torch.float32:
        raise ValueError(f"sigmoid_topk takes float32 logits and bias, got {logits.dtype} and {bias.dtype}")
    if num_groups < 1 or num_experts % num_groups or not 1 <= topk_groups <= num_groups:
        raise ValueError(f"{num_groups} expert groups (keeping {topk_groups}) do not split {num_experts} experts")
    group_size = num_experts // num_groups
    weights, ids = _outputs(logits, top_k, torch.float32, topk_groups * group_size)
    if logits.shape[0]:
        launch = _launch(*logits.shape)
        _sigmoid_topk_kernel[launch.pop("grid")](
            logits, bias.contiguous(), weights, ids, logits.stride(0), logits.shape[0], num_experts, group_size,
            num_groups, topk_groups, float(scale), int(renormalize), TOP_K=top_k, BLOCK_K=next_pow2(top_k),
            GROUPED=topk_groups < num_groups, **launch)
    return weights, ids


def softmax_topk(logits: torch.Tensor, top_k: int, renormalize: bool,
                 out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE's routing: logits [T, E] (bf16, fp16 or float32) -> (weights [T, top_k] in `out_dtype`
    (default the logits' dtype), expert ids [T, top_k] int64), as `moe.softmax_topk`."""
    num_experts = logits.shape[-1]
    out_dtype = out_dtype or logits.dtype
    weights, ids = _outputs(logits, top_k, out_dtype, num_experts)
    if logits.shape[0]:
        launch = _launch(*logits.shape)
        _softmax_topk_kernel[launch.pop("grid")](
            logits, weights, ids, logits.stride(0), logits.shape[0], num_experts, int(renormalize), TOP_K=top_k,
            BLOCK_K=next_pow2(top_k), ROUND=round_code(out_dtype), **launch)
    return weights, ids
