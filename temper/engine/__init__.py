"""temper's built-in inference engine: paged KV cache, prefix caching, continuous batching.

Entry points: `LLMEngine` (configured by `EngineArgs`), `SamplingParams`, `RequestOutput`. Names are
imported lazily, so that importing a light submodule (``temper --help`` reads the server's flags)
does not load torch and transformers.
"""

import importlib

_EXPORTS = {
    "EngineArgs": "engine_args", "LLMEngine": "llm_engine",
    "SamplingParams": "sampling_params", "RequestOutput": "sequence",
}
__all__ = ["EngineArgs", "LLMEngine", "RequestOutput", "SamplingParams"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'temper.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"temper.engine.{_EXPORTS[name]}"), name)
