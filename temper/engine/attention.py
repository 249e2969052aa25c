"""Paged attention over the KV cache.

The cache of one layer is two tensors ``[num_blocks, block_size, num_kv_heads, head_dim]``; token
slot s is ``cache.view(-1, H, D)[s]``. Every forward first writes the K/V of ALL new tokens of the
batch into their slots (`AttentionMetadata.slot_mapping`), then each sequence attends (on the fused
kernel path the q/k norm + RoPE kernel has written them just before: `kv_stored`). Sequences that
share prefix blocks therefore may read K/V that another sequence of the same batch wrote in the same
layer (the block manager relies on this; a replacement backend must keep "write all, then read").

`TorchPagedAttention` is the reference backend: pure PyTorch, CPU and CUDA, built on
``scaled_dot_product_attention``. Prefill attends per sequence; a sequence with no cached prefix uses
the new K/V directly (causal), one with a cached prefix gathers its context from the cache through its
block table, with the causal diagonal offset by the prefix length. Decode gathers each sequence's
context into a padded batch and makes one masked call. The CUDA backend,
`kernels.paged_attention.TritonPagedAttention`, implements the same `prepare` / `forward` pair from
the same metadata with Triton kernels that read the blocks in place; a latent-attention model's
(DeepSeek-V3's MLA: one cache tensor that is key and value) is `kernels.latent_attention.TritonLatentAttention`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionMetadata:
    """Batch layout shared by every layer in one forward pass (built once per step by the runner).

    T = new tokens in the batch, B = sequences.
    slot_mapping: [T] int64 cache slot of each new token.
    block_tables: [B, max_blocks] int64, padded with 0. context_lens: [B] int64, tokens of each
        sequence in the cache after this step (prefix + new).
    query_lens, cached_lens: per sequence (Python ints): new tokens, and tokens already cached.
    backend: the attention implementation for this forward pass; `prepare(meta)` has been called.
    q/k/v reach the backend as [T, H, D] views whose rows may be strided (slices of the fused qkv
    projection's output).
    """

    is_prefill: bool
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_lens: list[int]
    cached_lens: list[int]
    block_size: int
    backend: TorchPagedAttention  # or a Triton backend of `kernels` (same two methods)
    backend_data: dict = field(default_factory=dict)  # what the backend derives once per step


# Bounds on transient memory, so that the KV-cache sizing can reserve it (`workspace_bytes`).
DECODE_GATHER_TOKENS = 1 << 17  # padded context tokens gathered per decode attention call
MASKED_SCORE_ELEMENTS = 1 << 26  # heads x queries x keys per masked prefill attention call


class TorchPagedAttention:
    """Reference backend (see the module docstring)."""

    def prepare(self, meta: AttentionMetadata) -> None:
        """Derive gather indices once per step, shared by all layers."""
        context_lens = [c + n for c, n in zip(meta.cached_lens, meta.query_lens)]
        if meta.is_prefill:
            meta.backend_data["context_slots"] = [
                _context_slots(meta.block_tables[i], length, meta.block_size) if cached else None
                for i, (cached, length) in enumerate(zip(meta.cached_lens, context_lens))
            ]
        else:
            meta.backend_data["decode_groups"] = [
                (start, end, *_padded_slots(meta.block_tables[start:end], meta.context_lens[start:end],
                                            max(context_lens[start:end]), meta.block_size))
                for start, end in _decode_groups(context_lens)
            ]

    @staticmethod
    def workspace_bytes(num_heads: int, num_kv_heads: int, head_dim: int, itemsize: int) -> int:
        """Upper bound on the transient memory of one attention call (gathered and GQA-expanded K/V,
        float32 scores of the math fallback)."""
        gathered = DECODE_GATHER_TOKENS * 2 * (num_kv_heads + num_heads) * head_dim * itemsize
        return gathered + 3 * 4 * MASKED_SCORE_ELEMENTS

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                kv_stored: bool = False) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]. kv_stored: the caller has already written k/v
        into their cache slots (the fused RoPE kernel does)."""
        if k_cache is not None and not kv_stored:
            k_cache.view(-1, *k.shape[1:]).index_copy_(0, meta.slot_mapping, k)
            if v_cache.data_ptr() != k_cache.data_ptr():  # one latent cache is key and value (DeepSeek's MLA)
                v_cache.view(-1, *v.shape[1:]).index_copy_(0, meta.slot_mapping, v)
        if meta.is_prefill:
            return self._prefill(q, k, v, k_cache, v_cache, meta, scale)
        return self._decode(q, k_cache, v_cache, meta, scale)

    def _prefill(self, q, k, v, k_cache, v_cache, meta, scale):
        out = torch.empty_like(q)
        start = 0
        for n, slots in zip(meta.query_lens, meta.backend_data["context_slots"]):
            end = start + n
            if slots is None:
                out[start:end] = _sdpa(q[start:end], k[start:end], v[start:end], None, scale)
            else:
                ks = k_cache.view(-1, *k.shape[1:])[slots]
                vs = v_cache.view(-1, *v.shape[1:])[slots]
                mask = _causal_mask(n, len(slots), q.device)
                rows = max(1, MASKED_SCORE_ELEMENTS // (q.shape[1] * len(slots)))
                for r in range(0, n, rows):
                    out[start + r : start + min(n, r + rows)] = _sdpa(q[start + r : end][:rows], ks, vs,
                                                                      mask[r : r + rows], scale)
            start = end
        return out

    def _decode(self, q, k_cache, v_cache, meta, scale):
        out = torch.empty_like(q)
        k_flat, v_flat = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
        for start, end, slots, mask in meta.backend_data["decode_groups"]:
            ks = k_flat[slots].transpose(1, 2)  # [b, Hkv, L, D]
            vs = v_flat[slots].transpose(1, 2)
            out[start:end] = F.scaled_dot_product_attention(
                q[start:end, :, None, :], ks, vs, attn_mask=mask, scale=scale, enable_gqa=True
            )[:, :, 0, :]
        return out


def _decode_groups(context_lens: list[int]) -> list[tuple[int, int]]:
    """Consecutive [start, end) groups whose padded gather stays within DECODE_GATHER_TOKENS."""
    groups, start, longest = [], 0, 0
    for i, length in enumerate(context_lens):
        if i > start and max(longest, length) * (i + 1 - start) > DECODE_GATHER_TOKENS:
            groups.append((start, i))
            start, longest = i, 0
        longest = max(longest, length)
    groups.append((start, len(context_lens)))
    return groups


def _padded_slots(block_tables, context_lens, max_len: int, block_size: int):
    """Cache slots [b, max_len] of each sequence's context (padding reads slot 0) and the key mask
    [b, 1, 1, max_len]."""
    positions = torch.arange(max_len, device=block_tables.device)
    blocks = block_tables.gather(1, (positions // block_size).expand(block_tables.shape[0], -1))
    slots = blocks * block_size + positions % block_size
    return slots, (positions[None, :] < context_lens[:, None])[:, None, None, :]


def _context_slots(block_table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    num_blocks = -(-length // block_size)
    offsets = torch.arange(block_size, device=block_table.device)
    return (block_table[:num_blocks, None] * block_size + offsets[None, :]).flatten()[:length]


def _causal_mask(num_queries: int, num_keys: int, device: torch.device) -> torch.Tensor:
    # Query i sits at position num_keys - num_queries + i and sees keys up to there.
    rows = torch.arange(num_queries, device=device)[:, None] + (num_keys - num_queries)
    return torch.arange(num_keys, device=device)[None, :] <= rows


def _sdpa(q, k, v, mask, scale):
    """One sequence: q [n, Hq, D], k/v [L, Hkv, D] -> [n, Hq, D]; causal (top-left) when mask is None."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True,
    )
    return out[0].transpose(0, 1)


class PagedAttention(nn.Module):
    """The attention op of one layer; the runner sets k_cache / v_cache (None: no cache yet)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
                kv_stored: bool = False) -> torch.Tensor:
        """kv_stored: k/v are already in their cache slots (written by the fused RoPE kernel)."""
        return meta.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale, kv_stored)
