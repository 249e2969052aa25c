"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (q/k norm) with a sparse
mixture-of-experts block (`moe.SparseMoeBlock`, no shared expert) in place of the MLP on the layers
that HF's rule picks -- layer i is sparse unless i is in ``mlp_only_layers``, and only when
``num_experts > 0`` and ``(i + 1) % decoder_sparse_step == 0``; the others keep a dense MLP of
``intermediate_size``. Sliding-window attention (off in every released config) is not supported."""

from __future__ import annotations

from torch import nn

from temper.engine.models.decoder import DecoderLayer, DecoderSpec
from temper.engine.models.moe import SparseMoeBlock
from temper.engine.models.qwen3 import Qwen3ForCausalLM


def is_sparse_layer(hf_config, layer_idx: int) -> bool:
    """Whether HF's Qwen3MoeDecoderLayer `layer_idx` has experts."""
    return (
        layer_idx not in (getattr(hf_config, "mlp_only_layers", None) or [])
        and hf_config.num_experts > 0
        and (layer_idx + 1) % getattr(hf_config, "decoder_sparse_step", 1) == 0
    )


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    CUDA_GRAPH_KERNELS = (("fused_moe", "moe"),)  # the experts' reference dispatch reads its token counts on the host

    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        if getattr(hf_config, "use_sliding_window", False):
            raise NotImplementedError("Qwen3-MoE with use_sliding_window=true is not supported by temper's engine")
        return Qwen3ForCausalLM.spec(hf_config)

    def build_layer(self, hf_config, spec: DecoderSpec, rotary: nn.Module, layer_idx: int) -> nn.Module:
        mlp = SparseMoeBlock(hf_config, self.tp) if is_sparse_layer(hf_config, layer_idx) else None
        return DecoderLayer(hf_config, spec, rotary, self.tp, mlp=mlp)
