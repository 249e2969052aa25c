"""Qwen3 (dense): per-head RMSNorm on q and k before RoPE; biases only if ``attention_bias``."""

from __future__ import annotations

from temper.engine.models.decoder import DecoderForCausalLM, DecoderSpec


class Qwen3ForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        bias = bool(getattr(hf_config, "attention_bias", False))
        return DecoderSpec(qkv_bias=bias, o_bias=bias, qk_norm=True)
