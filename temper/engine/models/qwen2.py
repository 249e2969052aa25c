"""Qwen2 / Qwen2.5: biases on q, k and v (not on o); no q/k norm. Sliding-window attention (off in
every released Qwen2.5 config) is not supported."""

from __future__ import annotations

from temper.engine.models.decoder import DecoderForCausalLM, DecoderSpec


class Qwen2ForCausalLM(DecoderForCausalLM):
    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        if getattr(hf_config, "use_sliding_window", False):
            raise NotImplementedError("Qwen2 with use_sliding_window=true is not supported by temper's engine")
        return DecoderSpec(qkv_bias=True)
