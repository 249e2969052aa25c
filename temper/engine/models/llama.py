"""Llama 2/3: optional biases (``attention_bias`` on q/k/v/o, ``mlp_bias`` on the MLP); llama3 RoPE
scaling comes from the config (see `rotary.py`)."""

from __future__ import annotations

from temper.engine.models.decoder import DecoderForCausalLM, DecoderSpec


class LlamaForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        bias = bool(getattr(hf_config, "attention_bias", False))
        return DecoderSpec(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
