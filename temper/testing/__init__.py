"""Tiny random Hugging Face checkpoints (Qwen3, Qwen2, Llama, Qwen3-MoE, GLM4, DeepSeek-V3) with an offline
tokenizer, for tests.

Nothing here downloads: weights come from a seeded ``from_config``, the tokenizer is a byte-level BPE
trained on a built-in corpus. See `tiny_models` for the checkpoint layout and `tokenizer` for ids.
"""

from temper.testing.chat_template import CHAT_TEMPLATE
from temper.testing.tiny_models import (
    ARCHITECTURES,
    PRESETS,
    ModelShape,
    build_tiny_model,
    make_config,
    resolve_shape,
    tiny_model_dir,
)
from temper.testing.tokenizer import SPECIAL_TOKENS, TOKENIZER_SIZE, build_tokenizer, special_token_ids

__all__ = [
    "ARCHITECTURES",
    "CHAT_TEMPLATE",
    "PRESETS",
    "SPECIAL_TOKENS",
    "TOKENIZER_SIZE",
    "ModelShape",
    "build_tiny_model",
    "build_tokenizer",
    "make_config",
    "resolve_shape",
    "special_token_ids",
    "tiny_model_dir",
]
