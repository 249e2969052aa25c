"""Full (unsharded) weights of an FSDP model under their Hugging Face names, in size-bounded buckets.

This is the trainer's side of the weight-sync contract: engines load parameters by HF name
(`model.layers.0.self_attn.q_proj.weight`), so the trainer sends exactly the tensors that
`save_pretrained` would write — a tied lm-head is not sent twice (it is the embedding), and a parameter
that transformers keeps in another layout than its checkpoint (Qwen3-MoE's experts, fused in memory as
`experts.gate_up_proj` [E, 2I, H], one `gate_proj`/`up_proj` per expert on disk) goes out under the
checkpoint's names and shapes, through transformers' own reverse conversion.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from temper.train.parallelize import hf_name

Bucket = list[tuple[str, Tensor]]


def iter_full_parameters(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """(HF name, full tensor) for each distinct parameter, in registration order.

    Every rank must drive this iterator in step: each DTensor shard is all-gathered
    (`full_tensor()`, a collective; on one rank the shard is already whole), so every rank receives
    every full tensor. Tensors are detached
    and cast to `dtype` (default: the parameter's dtype).
    """
    converted = _converted_names(model)
    for name, param in model.named_parameters():  # remove_duplicate: a tied lm-head is the embedding
        with torch.no_grad():  # not around the yield: grad mode is the consumer's between items
            # the local shard first, then a plain detach: DTensor's own detach and autograd-tracked to_local
            # cost ~0.1 ms a parameter in Python, most of a 0.6B model's sync on one GPU (310 tensors)
            tensor = _full(param) if isinstance(param, DTensor) else param
            tensor = tensor.detach()
            tensor = tensor.to(dtype) if dtype is not None else tensor
        name = hf_name(name)
        if name in converted:
            yield from _revert_conversion(model, name, tensor).items()
        else:
            yield name, tensor


def _revert_conversion(model: nn.Module, name: str, tensor: Tensor) -> dict[str, Tensor]:
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, {name: tensor})


def _converted_names(model: nn.Module) -> frozenset[str]:
    """HF names of the parameters whose checkpoint names or shapes differ from the model's own (found
    once per model, on meta tensors; none with a transformers that converts nothing)."""
    cached = getattr(model, "_temper_converted_names", None)
    if cached is not None:
        return cached
    try:
        from transformers.core_model_loading import revert_weight_conversion  # noqa: F401
    except ImportError:
        names = frozenset()
    else:
        names = frozenset(
            name for name, param in ((hf_name(n), p) for n, p in model.named_parameters())
            if _changes(model, name, param)
        )
    model._temper_converted_names = names
    return names


def _changes(model: nn.Module, name: str, param: Tensor) -> bool:
    shape = param.shape  # a DTensor's is the whole tensor's
    try:
        out = _revert_conversion(model, name, torch.empty(shape, dtype=param.dtype, device="meta"))
    except Exception:  # noqa: BLE001 -- a model transformers cannot map back: sent as it is
        return False
    return list(out) != [name] or tuple(out[name].shape) != tuple(shape)


def _full(tensor: DTensor) -> Tensor:
    """The whole tensor: the shard itself on a one-rank mesh (no collective), else the all-gather (every
    rank decides alike, by the mesh, so the collectives stay in step)."""
    if tensor.device_mesh.size() == 1:
        return tensor.to_local()
    return tensor.full_tensor()


def iter_weight_buckets(model: nn.Module, bucket_bytes: int, dtype: torch.dtype | None = None) -> Iterator[Bucket]:
    """Consecutive parameters grouped into lists of at most `bucket_bytes` bytes.

    A single tensor larger than `bucket_bytes` travels alone in its own bucket. All ranks iterate
    (the gathers are collectives) and get the same buckets; callers other than the sender (rank 0)
    can drop them.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes (--update-weight-buffer-size) must be positive, got {bucket_bytes}")
    bucket: Bucket = []
    size = 0
    for name, tensor in iter_full_parameters(model, dtype):
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket
