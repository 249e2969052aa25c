"""Varlen attention for packed rows: each sequence attends causally to itself only, at a cost
proportional to Σ L_i² rather than (Σ L_i)².

The train worker packs several sequences into one row (packing.py). Hugging Face's ``sdpa`` path
turns such a row into a dense [S, S] block-diagonal mask, so a 16k-token micro-batch pays for
16k² scores. This module registers an attention function with Hugging Face's `AttentionInterface`
under the name `VARLEN` ("temper_varlen"); a model loaded with ``attn_implementation=VARLEN`` calls
it in every layer with the row's cumulative sequence starts, which the train worker passes to the
model's forward (`varlen_kwargs`). Hugging Face builds no mask for an attention name it has no
mask function for.

- CUDA, bf16/fp16: ``torch.nn.attention.varlen.varlen_attn`` (Flash Attention over the packed row).
- Anything else (CPU, fp32): `scaled_dot_product_attention` with ``is_causal`` per sequence — exact
  in fp32, and the reference the fast path is tested against.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

VARLEN = "temper_varlen"
FLASH_DTYPES = (torch.bfloat16, torch.float16)


def varlen_kwargs(cu_seqlens: Tensor, max_seqlen: int) -> dict:
    """The forward kwargs that carry a packed row's sequence bounds down to `varlen_attention`.

    cu_seqlens: [N+1] int32 on the model's device, 0 then the running sums of the sequence lengths.
    The names are Hugging Face's flash-attention kwargs, which its models pass through to attention.
    """
    return {
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens,
        "max_length_q": max_seqlen,
        "max_length_k": max_seqlen,
    }


def varlen_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, None]:
    """Hugging Face attention-interface function: query/key [1, Hq or Hkv, S, D], value [1, Hkv, S, Dv] of one
    packed row (Dv differs from D in DeepSeek's latent attention); returns ([1, S, Hq, Dv], None). Needs
    `varlen_kwargs` in the model's forward kwargs."""
    cu_seqlens, max_seqlen = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu_seqlens is None or max_seqlen is None:
        raise ValueError(
            f"attention {VARLEN!r} needs the packed row's sequence bounds: call the model with "
            "**temper.train.attention.varlen_kwargs(cu_seqlens, max_seqlen)"
        )
    if query.shape[0] != 1 or attention_mask is not None or dropout:
        raise ValueError(
            f"attention {VARLEN!r} takes one packed row without a mask or dropout; got batch {query.shape[0]}, "
            f"mask {attention_mask is not None}, dropout {dropout}"
        )
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [S, H, D]
    if q.is_cuda and q.dtype in FLASH_DTYPES:
        out = _flash_varlen(*_one_head_size(q, k, v), cu_seqlens, int(max_seqlen), scaling)[..., : v.shape[-1]]
    else:
        out = _sdpa_per_sequence(q, k, v, cu_seqlens, scaling)
    return out[None], None


def _one_head_size(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k and v zero-padded to one head size, which Flash Attention needs: zero columns of q and k leave
    the scores as they are (the scale is passed explicitly), those of v add output columns that are cut off."""
    size = max(q.shape[-1], v.shape[-1])
    return tuple(t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1])) for t in (q, k, v))


def _sdpa_per_sequence(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, scaling: float | None) -> Tensor:
    """Causal attention of each sequence on its own; [S, Hq, D] in, [S, Hq, Dv] out."""
    bounds = cu_seqlens.tolist()
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    gqa = q.shape[1] != k.shape[1]
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        rows = slice(start, end)
        out[rows] = F.scaled_dot_product_attention(
            q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1),
            is_causal=True, scale=scaling, enable_gqa=gqa,
        ).transpose(0, 1)  # fmt: skip
    return out


def _flash_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scaling: float | None) -> Tensor:
    if not _FLASH:  # called directly, not through a model loaded by `register`d name
        _resolve_flash()
    extra = dict(_FLASH["causal"])
    if _FLASH["gqa_flag"] and q.shape[1] != k.shape[1]:
        extra["enable_gqa"] = True
    return _FLASH["fn"](q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scaling, **extra)


# Filled by `register`, outside any compiled region: torch.compile traces `_flash_varlen` without
# running imports or signature inspection.
_FLASH: dict = {}


def _resolve_flash() -> None:
    """torch 2.11 and 2.13 spell "causal" differently (``is_causal=True`` or ``window_size=(-1, 0)``)
    and only the newer one has ``enable_gqa``."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn takes neither window_size nor is_causal")
    _FLASH.update(fn=varlen_attn, causal=causal, gqa_flag="enable_gqa" in params)


@functools.cache
def register() -> str:
    """Register `varlen_attention` with Hugging Face as `VARLEN` (once); returns the name."""
    from transformers import AttentionInterface

    if torch.cuda.is_available():
        _resolve_flash()
    AttentionInterface.register(VARLEN, varlen_attention)
    return VARLEN
