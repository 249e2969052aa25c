"""temper's built-in inference engine: paged KV cache, prefix caching, continuous batching.

Entry points: `LLMEngine` (configured by `EngineArgs`), `SamplingParams`, `RequestOutput`.
"""

from temper.engine.engine_args import EngineArgs
from temper.engine.llm_engine import LLMEngine
from temper.engine.sampling_params import SamplingParams
from temper.engine.sequence import RequestOutput

__all__ = ["EngineArgs", "LLMEngine", "RequestOutput", "SamplingParams"]
