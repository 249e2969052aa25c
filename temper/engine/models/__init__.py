"""Engine-native model classes, by the HF ``architectures`` name in config.json."""

from __future__ import annotations

from temper.engine.models.decoder import DecoderForCausalLM
from temper.engine.models.deepseek_v3 import DeepseekV3ForCausalLM
from temper.engine.models.glm4 import Glm4ForCausalLM
from temper.engine.models.glm4_moe import Glm4MoeForCausalLM
from temper.engine.models.llama import LlamaForCausalLM
from temper.engine.models.qwen2 import Qwen2ForCausalLM
from temper.engine.models.qwen3 import Qwen3ForCausalLM
from temper.engine.models.qwen3_moe import Qwen3MoeForCausalLM

MODEL_CLASSES: dict[str, type[DecoderForCausalLM]] = {
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "Glm4ForCausalLM": Glm4ForCausalLM,
    "DeepseekV3ForCausalLM": DeepseekV3ForCausalLM,
    "Glm4MoeForCausalLM": Glm4MoeForCausalLM,
}


def model_class(hf_config) -> type[DecoderForCausalLM]:
    """The engine class for `hf_config.architectures[0]`, or ValueError listing the supported ones."""
    architectures = getattr(hf_config, "architectures", None) or []
    for name in architectures:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    raise ValueError(
        f"temper's engine does not support architectures {architectures}; supported: {sorted(MODEL_CLASSES)}"
    )
