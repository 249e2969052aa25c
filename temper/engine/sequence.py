"""Request state inside the engine (`Sequence`) and what the engine reports back (`RequestOutput`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from temper.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    """One request's state after an engine step (cumulative, except `new_token_ids`).

    output_logprobs: one float per output token, log_softmax(logits / temperature) of the sampled
        token over the full vocabulary (temperature 0: log_softmax(logits)); see `sampler.py`.
    text: detokenized output so far; once finished, the stop string (and stop token text) is cut
        unless `no_stop_trim`. Token ids are never trimmed.
    matched_stop: the EOS / stop token id or the stop string that ended the request, else None.
    cached_tokens: prompt tokens served from the prefix cache when the request was first admitted.
    routed_experts: for a request that asked (``return_routed_experts``), once finished: int32
        [tokens, num_hidden_layers, top_k], the experts each computed token (prompt and output but the
        last) was routed to, -1 on dense layers (`routed_experts.py`); else None.
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    output_logprobs: list[float]
    new_token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    matched_stop: int | str | None
    cached_tokens: int
    weight_version: str
    routed_experts: np.ndarray | None = None


@dataclass
class DetokenizerState:
    """Incremental detokenization offsets into `output_token_ids` (see `detokenizer.py`): the left context
    is ids[prefix_offset:context_end], the ids not yet read ids[read_offset:] (ids between context_end
    and read_offset added no text and are left out of the windows)."""

    text: str = ""
    prefix_offset: int = 0
    context_end: int = 0
    read_offset: int = 0


class Sequence:
    """One request: prompt + generated tokens, its KV blocks and its finish state.

    token_ids holds prompt and output together, so a preempted sequence is recomputed from it as if
    its output were part of the prompt. num_computed_tokens counts tokens whose K/V are in the cache
    or being computed by a launched step (prefix-cache hits included). num_pending counts tokens
    sampled by a launched step but not yet read back (0 or 1; only with overlapped scheduling, see
    `llm_engine.py`): they follow token_ids. num_preemptions counts how often it was preempted
    (SGLang's num_retractions). stream=False (a caller that wants only the final output, e.g. a
    non-streaming HTTP request): the engine reports it after its first token, when the weight version
    changes and when it finishes, and detokenizes it once at the end (see `LLMEngine.step`).
    return_routed_experts: read its tokens' routed experts when it finishes (`routed_experts`).
    """

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, seed: int,
                 stream: bool = True, return_routed_experts: bool = False):
        self.request_id = request_id
        self.stream = stream
        self.return_routed_experts = return_routed_experts
        self.routed_experts: np.ndarray | None = None  # read when it finishes, if it asked
        self.params = params
        self.seed = seed
        self.token_ids: list[int] = list(prompt_token_ids)
        self.prompt_token_ids: list[int] = list(prompt_token_ids)  # shared by every output; read-only
        self.num_prompt_tokens = len(prompt_token_ids)
        self.output_logprobs: list[float] = []
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of full blocks, filled by the block manager
        self.num_hashed_blocks = 0  # leading blocks of block_table registered in the prefix cache
        self.num_computed_tokens = 0
        self.num_pending = 0
        self.cached_tokens: int | None = None  # set at first admission
        self.num_preemptions = 0
        self.detok = DetokenizerState()
        self.finish_reason: str | None = None
        self.matched_stop: int | str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_tokens(self, index: int, block_size: int) -> list[int]:
        return self.token_ids[index * block_size : (index + 1) * block_size]

    def append_token(self, token_id: int, logprob: float) -> None:
        self.token_ids.append(token_id)
        self.output_logprobs.append(logprob)

    def finish(self, reason: str, matched: int | str | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.matched_stop = matched

    def to_output(self, weight_version: str, new_token_ids: list[int]) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            output_token_ids=self.output_token_ids,
            output_logprobs=list(self.output_logprobs),
            new_token_ids=new_token_ids,
            text=self.detok.text,
            finished=self.finished,
            finish_reason=self.finish_reason,
            matched_stop=self.matched_stop,
            cached_tokens=self.cached_tokens or 0,
            weight_version=weight_version,
            routed_experts=self.routed_experts if self.finished else None,
        )
