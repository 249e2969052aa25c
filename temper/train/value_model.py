"""The PPO critic's network: the policy's backbone class with a `hidden → 1` value head.

As in slime (`LinearForLastLayer`), the critic is the same transformer as the actor with its output
layer replaced: here the Hugging Face base model (`AutoModel`, e.g. `Qwen3Model`) loaded from the
same checkpoint, plus a linear head initialized to zero, so that the first values are 0 and the
head learns from the first returns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

from temper.train.hf_model import moe_load_options, packed_forward_kwargs, resolve_attention
from temper.train.moe_routing import route_in_fp32
from temper.train.packing import MicroBatch


class ValueModel(nn.Module):
    """V(s_t) for every response token of a packed micro-batch: head(backbone(tokens)) at t − 1."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(backbone.config.hidden_size, 1, dtype=backbone.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        # parallelize.py finds the decoder blocks by these class names, as on a Hugging Face model.
        self._no_split_modules = list(getattr(backbone, "_no_split_modules", None) or [])

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype, attn_implementation: str | None = None, *,
        router_dtype: str | None = None,
    ) -> ValueModel:
        """The checkpoint's backbone with a zero value head; an MoE backbone loads as the actor's does (grouped
        experts, fp32 routers with `router_dtype` "fp32": `hf_model.load_causal_lm`)."""
        backbone = AutoModel.from_pretrained(
            path, dtype=dtype, attn_implementation=resolve_attention(attn_implementation),
            **moe_load_options(AutoConfig.from_pretrained(path)),
        )
        backbone.config.use_cache = False
        if router_dtype == "fp32":
            route_in_fp32(backbone)
        return cls(backbone)

    def forward(self, response_index: Tensor, **inputs) -> Tensor:
        """[Tr] values at `response_index` of a packed row; `inputs`: `hf_model.packed_forward_kwargs`."""
        hidden = self.backbone(**inputs).last_hidden_state
        values = self.value_head(hidden[0].index_select(0, response_index))
        return values[:, 0].float().clone()  # not a view: FSDP hooks the output for backward

    def values(self, mb: MicroBatch) -> Tensor:
        """[Tr] fp32 values of `mb`'s response tokens."""
        return self(mb.response_index, **packed_forward_kwargs(mb))
