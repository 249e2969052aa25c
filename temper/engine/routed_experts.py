"""`RoutedExpertsCache`: the experts each computed token was routed to, kept beside its K/V, for requests
that ask for them (``return_routed_experts``; rollout routing replay, R3, arXiv 2510.11370).

One int16 row per KV-cache slot and model layer: ``buffer`` [slots + 1, num_hidden_layers, top_k], the
expert ids a token's MoE layers picked (-1 on dense layers). Every MoE block of the model writes its
top-k ids into the rows of the forward's cache slots (`record`: one ``index_copy_`` on the device, no
host reads, so it is captured in the decode CUDA graphs too; the padding rows of a graph batch, slot -1,
land in the spare last row). Keyed by slot, the routing follows the K/V: a prompt served from the prefix
cache brings the routing of the forward that computed it, a preempted sequence's recomputation writes
it again. When a request that asked ends, the engine reads its tokens' rows through its block table
(`gather`) before its blocks are freed.

The answer is SGLang's: ``meta_info.routed_experts``, base64 of little-endian int32 [tokens - 1,
num_hidden_layers, top_k] (the prompt and output tokens the model computed: every one but the last
sampled token), so that a client of either engine decodes it the same way (`encode`).
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from torch import nn


class RoutedExpertsCache:
    def __init__(self, num_layers: int, top_k: int, num_experts: int):
        if num_experts > torch.iinfo(torch.int16).max:
            raise ValueError(f"{num_experts} experts do not fit the int16 routing cache")
        self.num_layers, self.top_k = num_layers, top_k
        self.buffer: torch.Tensor | None = None
        self.slots: torch.Tensor | None = None  # the current forward's cache slots (set by the model)

    @staticmethod
    def for_model(model: nn.Module) -> RoutedExpertsCache | None:
        """A cache bound to every MoE block of `model` (those with a ``routed_experts`` attribute, at
        ``model.model.layers[i].mlp``); None for a model without experts."""
        blocks = [(i, layer.mlp) for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "routed_experts")]
        if not blocks:
            return None
        experts = blocks[0][1].experts
        cache = RoutedExpertsCache(len(model.model.layers), experts.top_k, experts.num_experts)
        for i, block in blocks:
            block.routed_experts = (cache, i)
        return cache

    def bytes_per_slot(self) -> int:
        return self.num_layers * self.top_k * 2

    def allocate(self, num_slots: int, device: torch.device) -> None:
        self.buffer = torch.full((num_slots + 1, self.num_layers, self.top_k), -1, dtype=torch.int16, device=device)

    def free(self) -> None:
        self.buffer = None

    def record(self, layer: int, ids: torch.Tensor) -> None:
        """The top-k expert ids [T, top_k] of layer `layer` for the forward's T tokens, into their slots."""
        if self.buffer is None or self.slots is None:  # no KV cache (the start-up warm-up)
            return
        rows = torch.remainder(self.slots, self.buffer.shape[0])  # slot -1 (padding) -> the spare last row
        self.buffer[:, layer].index_copy_(0, rows, ids.to(torch.int16))

    def gather(self, block_table: list[int], num_tokens: int, block_size: int) -> np.ndarray:
        """The routing of positions 0..num_tokens-1 of a sequence with `block_table`: int32
        [num_tokens, num_layers, top_k] on the host (waits for the steps queued before)."""
        if self.buffer is None or num_tokens == 0:
            return np.full((0, self.num_layers, self.top_k), -1, dtype=np.int32)
        positions = np.arange(num_tokens)
        slots = np.asarray(block_table, dtype=np.int64)[positions // block_size] * block_size + positions % block_size
        rows = self.buffer.index_select(0, torch.from_numpy(slots).to(self.buffer.device))
        return rows.cpu().numpy().astype(np.int32)


def encode(routed: np.ndarray) -> str:
    """SGLang's ``meta_info.routed_experts``: base64 of the little-endian int32 bytes."""
    return base64.b64encode(np.ascontiguousarray(routed, dtype="<i4").tobytes()).decode("ascii")

