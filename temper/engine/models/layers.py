"""Building blocks of the engine's decoder models, numerically matching Hugging Face's modules.

Weight loading lives on the parameters (as in nano-vllm): every parameter carries
``weight_loader(param, tensor, shard_id)`` and ``shard_view(param, shard_id)``. A fused layer
(`MergedLinear`: q/k/v or gate/up stacked along the output dimension) maps an HF shard to its rows;
a plain parameter has one shard, None. Loading and reading weights by HF name both go through
`shard_view`, so fusion is described in exactly one place per layer.

Tensor parallelism (Megatron's layout, over a `TPGroup`; with one rank every layer is the plain one):
`MergedLinear` is column-parallel (each rank holds its rows of every stacked projection: its heads, its
part of the intermediate size), `RowParallelLinear` is row-parallel (each rank holds its input columns;
the partial outputs are summed by an all-reduce, then the bias is added once), everything else is
replicated. A sharded parameter gets the FULL Hugging Face tensor and keeps its rank's slice
(`weight_loader`); its ``tp_dim`` says along which dimension, so the full tensor can be gathered back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from temper.engine import kernels
from temper.engine.tp_group import TPGroup


def copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst.copy_(src) (any dtype/device), or ValueError if the shapes differ."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
    dst.copy_(src)


def _whole(param: nn.Parameter, shard_id: object = None) -> torch.Tensor:
    if shard_id is not None:
        raise ValueError(f"parameter is not fused; got shard {shard_id!r}")
    return param.data


def _load_whole(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
    copy_checked(_whole(param, shard_id), loaded)


def rank_slice(loaded: torch.Tensor, local_shape: tuple[int, ...], dim: int, tp: TPGroup, full: int) -> torch.Tensor:
    """This rank's part along `dim` of the full tensor `loaded`; ValueError unless `loaded` has the full
    shape (`local_shape` with `full` at `dim`)."""
    expected = list(local_shape)
    expected[dim] = full
    if list(loaded.shape) != expected:
        raise ValueError(f"expected shape {tuple(expected)}, got {tuple(loaded.shape)}")
    start, length = tp.shard_range(full)
    return loaded.narrow(dim, start, length)


def mark_view_copy(param: nn.Parameter) -> None:
    """Declare that `param`'s current ``weight_loader`` only copies a tensor of exactly the view's shape into
    ``shard_view(param, shard_id)`` (nothing sliced, fused or computed), so that `WeightMap.load` may batch
    such copies. A loader set later is not covered: the mark names the loader it was made for."""
    param.view_copy_loader = param.weight_loader


def engine_param(*shape: int, fill: float | None = None) -> nn.Parameter:
    """An inference parameter (no grad, uninitialised unless `fill`) with the default loader; replicated
    on every tensor-parallel rank (``tp_dim`` None)."""
    data = torch.empty(*shape) if fill is None else torch.full(shape, fill)
    param = nn.Parameter(data, requires_grad=False)
    param.weight_loader, param.shard_view, param.tp_dim = _load_whole, _whole, None
    mark_view_copy(param)
    return param


def sharded_param(*local_shape: int, dim: int, tp: TPGroup, full: int) -> nn.Parameter:
    """A parameter holding this rank's `tp.shard_range(full)` part along `dim` of a full HF tensor."""
    param = engine_param(*local_shape)

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        view = _whole(param, shard_id)
        copy_checked(view, rank_slice(loaded, tuple(view.shape), dim, tp, full))

    param.weight_loader, param.tp_dim, param.tp_full = load, dim, full
    if tp.size == 1:  # the whole tensor is this rank's part
        mark_view_copy(param)
    return param


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = engine_param(out_features, in_features)
        self.bias = engine_param(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several projections of the same input, stacked along the output dim; shards named by id.

    Column-parallel: `shard_sizes` are the full (HF) output sizes; each rank holds its
    `tp.shard_range` rows of every shard (they must divide, see `EngineArgs.check_model`).
    """

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool = False, tp: TPGroup | None = None):
        self.tp = tp or TPGroup()
        local = {shard_id: size // self.tp.size for shard_id, size in shard_sizes.items()}
        super().__init__(in_features, sum(local.values()), bias)
        self.full_sizes = dict(shard_sizes)
        self.offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for shard_id, size in local.items():
            self.offsets[shard_id] = (offset, size)
            offset += size
        for param in (self.weight, self.bias):
            if param is not None:
                param.weight_loader, param.shard_view, param.tp_dim = self._load_shard, self._shard_view, 0
                if self.tp.size == 1:  # a shard's rows are one block of the parameter, its whole HF tensor
                    mark_view_copy(param)

    def _shard_view(self, param: nn.Parameter, shard_id: str | None) -> torch.Tensor:
        if shard_id not in self.offsets:
            raise ValueError(f"fused parameter has shards {list(self.offsets)}; got {shard_id!r}")
        offset, size = self.offsets[shard_id]
        return param.data.narrow(0, offset, size)

    def _load_shard(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        view = self._shard_view(param, shard_id)
        copy_checked(view, rank_slice(loaded, tuple(view.shape), 0, self.tp, self.full_sizes[shard_id]))

    def split(self, out: torch.Tensor) -> list[torch.Tensor]:
        return list(out.split([size for _, size in self.offsets.values()], dim=-1))


class ColumnParallelLinear(nn.Module):
    """One projection whose output features are split over the ranks (each holds its
    `tp.shard_range(out_features)` rows: its heads when the rows are head-major); no bias."""

    def __init__(self, in_features: int, out_features: int, tp: TPGroup | None = None):
        super().__init__()
        self.tp = tp or TPGroup()
        self.weight = sharded_param(out_features // self.tp.size, in_features, dim=0, tp=self.tp, full=out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class RowParallelLinear(nn.Module):
    """A projection whose input features are split over the ranks (the input is the output of a
    column-parallel layer): partial products are summed by an all-reduce, then the (replicated) bias
    is added once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TPGroup | None = None):
        super().__init__()
        self.tp = tp or TPGroup()
        self.weight = sharded_param(out_features, in_features // self.tp.size, dim=1, tp=self.tp, full=in_features)
        self.bias = engine_param(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.linear(x, self.weight, self.bias)
        out = self.tp.all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias


class LMHead(nn.Module):
    """An untied LM head: this rank's `tp.shard_range(vocab_size)` rows (the logits are gathered by
    `DecoderForCausalLM.compute_logits`)."""

    def __init__(self, hidden_size: int, vocab_size: int, tp: TPGroup):
        super().__init__()
        self.weight = sharded_param(tp.shard_range(vocab_size)[1], hidden_size, dim=0, tp=tp, full=vocab_size)


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = engine_param(num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """HF's RMSNorm: normalise in float32, cast back, then scale (the order matters in bf16).

    forward(x) -> norm(x); forward(x, residual) -> (norm(x + residual), x + residual): the decoder
    layer's residual add, fused into the same kernel on the fast path.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = engine_param(dim, fill=1.0)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.dim() == 2 and kernels.enabled("layers", x):
            return kernels.module("elementwise").add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if gate_up.dim() == 2 and kernels.enabled("layers", gate_up):
        return kernels.module("elementwise").silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
