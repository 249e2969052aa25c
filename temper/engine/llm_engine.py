"""`LLMEngine`: temper's built-in inference engine (single-threaded; the HTTP server drives it).

Requests go in with `add_request`; each `step()` runs one scheduler step (a prefill or a decode
batch) and reports every request that got a token or finished. Token ids are the truth; text is
detokenized incrementally for stop strings and for the caller.

Overlapped scheduling (`EngineArgs.overlap_scheduling`, on by default on CUDA): a step schedules
and launches the next batch before it waits for the tokens of the batch already on the device, so
the host's bookkeeping (stop checks, scheduling, input preparation) runs while the GPU computes
instead of between its steps. A step then reports the tokens of the batch launched by the step
before; sequences run one step behind their sampled token (see `scheduler.py`). Operations that
need the device idle (weight loads, memory release, cache flush) first wait for the batch in flight
and hold its outputs for the next `step()`.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterable

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from temper.engine.block_manager import BlockManager
from temper.engine.detokenizer import Detokenizer
from temper.engine.engine_args import EngineArgs
from temper.engine.model_runner import LaunchedStep, ModelRunner
from temper.engine.sampling_params import SamplingParams
from temper.engine.scheduler import Scheduler
from temper.engine.sequence import RequestOutput, Sequence
from temper.engine.stop_checker import StopChecker
from temper.engine.tp_worker import TPWorkers
from temper.engine.weight_checksum import to_ints, weight_checksum

DEFAULT_MAX_MODEL_LEN = 4096
MEMORY_TAGS = ("weights", "kv_cache")


class LLMEngine:
    """Continuous-batching engine over one model on one device, or split over
    ``args.tensor_parallel_size`` devices (worker processes that `close()` stops).

    Attributes: args, hf_config, tokenizer (``AutoTokenizer`` of the checkpoint), weight_version (set
    by the caller after a weight update; copied into every output), max_model_len, eos_token_ids.

    Not thread-safe: one thread calls every method. After `load_weights` the prefix cache is dropped;
    requests that are running keep their K/V (as SGLang does for partial rollouts).
    """

    def __init__(self, args: EngineArgs):
        self.args = args
        self.hf_config = AutoConfig.from_pretrained(args.model)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        self.max_model_len = args.max_model_len or min(self.hf_config.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
        self._weight_version = "default"
        args.check_model(self.hf_config)  # before any tensor-parallel worker starts
        workers = TPWorkers(args, self.hf_config, self.max_model_len) if args.tensor_parallel_size > 1 else None
        self.model_runner = ModelRunner(args, self.hf_config, self.max_model_len, workers=workers)
        self.block_manager = BlockManager(self.model_runner.num_kv_blocks, args.block_size, args.enable_prefix_caching)
        self.eos_token_ids = _eos_token_ids(args.model, self.hf_config)
        stop_checker = StopChecker(Detokenizer(self.tokenizer), self.eos_token_ids, self.max_model_len)
        self.scheduler = Scheduler(args.max_num_seqs, args.max_num_batched_tokens, self.block_manager, stop_checker)
        self.scheduler.on_finish = self._read_routed_experts
        self.scheduler.on_preempt = self._keep_routed_experts
        self._rng = random.Random(args.seed)
        self._released: set[str] = set()
        device = self.model_runner.device
        self._overlap = args.overlap_scheduling if args.overlap_scheduling is not None else device.type == "cuda"
        self._in_flight: LaunchedStep | None = None
        self._held: list[RequestOutput] = []  # outputs of a step resolved outside `step()`

    @property
    def weight_version(self) -> str:
        return self._weight_version

    @weight_version.setter
    def weight_version(self, version: str) -> None:
        """Set after a weight update. Non-streaming requests that already have tokens are reported under
        the old version first (with the next `step`), so a caller can tell which version made which tokens."""
        if version != self._weight_version:
            self._held += [seq.to_output(self._weight_version, []) for seq in self.scheduler.unfinished.values()
                           if not seq.stream and seq.num_output_tokens]
        self._weight_version = version

    # ---- requests ---------------------------------------------------------------------------
    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    stream: bool = True, return_routed_experts: bool = False) -> str:
        """Queue one request (params.n must be 1); returns its id. ValueError for a bad request.
        stream=False: `step` reports it only after its first token, when the weight version changes and
        when it finishes (its text is decoded once, at the end). return_routed_experts: its final output
        carries the experts its tokens were routed to (`RequestOutput.routed_experts`; MoE models only)."""
        self._validate(prompt_token_ids, params)
        if return_routed_experts and self.model_runner.routed_experts is None:
            raise ValueError(f"return_routed_experts: {type(self.model_runner.model).__name__} has no experts")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        if request_id in self.scheduler.unfinished:
            raise ValueError(f"request_id {request_id!r} is already in use by an unfinished request")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = Sequence(request_id, list(prompt_token_ids), params, seed, stream, return_routed_experts)
        if params.max_new_tokens == 0:
            self.scheduler.stop_checker.finish(seq, "length")
            self.scheduler.add_finished(seq)
        else:
            self.scheduler.add(seq)
        return request_id

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        params.validate()
        if params.n != 1:
            raise ValueError(f"add_request takes one sample per request, got n={params.n}; add n requests instead")
        if len(ids) == 0:
            raise ValueError("prompt_token_ids is empty; a request needs at least one prompt token")
        bad = next(((i, t) for i, t in enumerate(ids) if not isinstance(t, int) or not 0 <= t < self.hf_config.vocab_size), None)
        if bad is not None:
            raise ValueError(
                f"prompt_token_ids[{bad[0]}]={bad[1]!r} is not a token id in [0, {self.hf_config.vocab_size})"
            )
        if len(ids) + 1 > self.max_model_len:
            raise ValueError(
                f"The input ({len(ids)} tokens) is longer than the model's context length ({self.max_model_len} "
                "tokens): prompt + 1 generated token must fit; shorten the prompt or raise max_model_len"
            )

    def abort_request(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def _read_routed_experts(self, seq: Sequence) -> None:
        """A finished request's routed experts, read before its KV blocks are freed (scheduler hook). One that
        finished while preempted (its last token was in flight) keeps what `_keep_routed_experts` read."""
        if seq.return_routed_experts and not (seq.num_computed_tokens == 0 and seq.routed_experts is not None):
            seq.routed_experts = self.model_runner.routed_experts_of(seq)

    def _keep_routed_experts(self, seq: Sequence) -> None:
        """Before a preemption frees its blocks (scheduler hook): the routing of every token a request with a
        token in flight has computed, which is all it will have computed if that token ends it (else its
        recomputation writes the routing again and the final read replaces this one)."""
        if seq.return_routed_experts and seq.num_pending:
            seq.routed_experts = self.model_runner.routed_experts_of(seq, seq.num_computed_tokens)

    def take_finished(self) -> list[RequestOutput]:
        """Final outputs of the requests aborted (or finished before any step) since the last `step`, now
        rather than with the next step: for a caller that is not stepping (paused)."""
        return [seq.to_output(self.weight_version, []) for seq in self.scheduler.pop_finished_early()]

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None or bool(self._held)

    def step(self) -> list[RequestOutput]:
        """One scheduler step; an output for every request that got a token or finished (a request added
        with stream=False: only for its first token and when it finishes)."""
        return self._step(stream=True)

    def _step(self, stream: bool) -> list[RequestOutput]:
        """stream=False (offline `generate`): outputs only for finished requests, whose text is then
        decoded once instead of per token (see `StopChecker.check_many`)."""
        outputs, self._held = self._held, []
        if self.scheduler.num_unfinished():
            self._check_resident()
        outputs += [seq.to_output(self.weight_version, []) for seq in self.scheduler.pop_finished_early()]
        batch = self.scheduler.schedule()
        previous, self._in_flight = self._in_flight, None
        if batch is not None:
            launched = self.model_runner.launch(batch, previous)
            self.scheduler.launched(batch)
            if self._overlap:
                self._in_flight = launched
            else:
                outputs += self._resolve(launched, stream)
        if previous is not None:
            outputs += self._resolve(previous, stream)
        return outputs

    def _resolve(self, launched: LaunchedStep, stream: bool) -> list[RequestOutput]:
        token_ids, logprobs = launched.result()
        seqs = self.scheduler.resolve(launched.batch, token_ids, logprobs, text=stream)
        return [seq.to_output(self.weight_version, [seq.last_token_id]) for seq in seqs
                if seq.finished or (stream and (seq.stream or seq.num_output_tokens == 1))]

    def _finish_in_flight(self) -> None:
        """Wait for the batch on the device (if any); its outputs go out with the next `step()`."""
        if self._in_flight is not None:
            launched, self._in_flight = self._in_flight, None
            self._held += self._resolve(launched, stream=True)

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[RequestOutput]:
        """Run prompts to completion; final outputs in prompt order (n > 1: n consecutive outputs per
        prompt, whose seeds are seed, seed + 1, ... when the params carry a seed).

        Blocking: it steps the engine until every request, including ones added before, finished.
        A bad prompt or params raises ValueError before anything runs.
        """
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"generate: {len(prompts)} prompts but {len(params_list)} SamplingParams")
        requests = list(_expand_n(prompts, params_list))
        for prompt, p in requests:  # all or nothing
            self._validate(prompt, p)
        ids = [self.add_request(prompt, p) for prompt, p in requests]
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished_requests():
            final.update((out.request_id, out) for out in self._step(stream=False) if out.finished)
        return [final[i] for i in ids]

    # ---- weights ----------------------------------------------------------------------------
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (HF name, tensor) pairs into the model, then drop the prefix cache (its K/V are stale)."""
        self._finish_in_flight()
        self.model_runner.load_weights(named_tensors)
        self.block_manager.flush()

    def load_weights_from_disk(self, path: str) -> None:
        """`load_weights` from a Hugging Face checkpoint folder (every tensor-parallel rank reads it)."""
        self._finish_in_flight()
        self.model_runner.load_weights_from_disk(path)
        self.block_manager.flush()

    def get_weights_by_name(self, name: str) -> torch.Tensor:
        return self.model_runner.get_weight(name)

    def weight_checksums(self, names: list[str] | None = None) -> dict[str, int | None]:
        """{HF name: `weight_checksum` of the full weight, in the engine's dtype and the HF layout} for
        `names` (default: every weight the model loads); None for a name the engine does not use (a
        buffer it computes itself). ValueError for an unknown name, before any is computed. One weight
        at a time on the device (gathered under tensor parallelism); the sums are copied out at the end.
        A weight the engine keeps in float32 whatever its dtype (DeepSeek-V3's and GLM-4.5's routers) is
        summed cast to the engine's dtype, the one the trainer's sums are in (`weight_check.SentWeights`):
        it holds what the trainer sent in that dtype, exactly."""
        weights = self.model_runner.weight_map
        names = weights.hf_names() if names is None else list(names)
        used = [name for name in names if not weights.ignored(name)]
        for name in used:
            weights.resolve(name)
        dtype = self.model_runner.dtype
        sums = dict(zip(used, to_ints([weight_checksum(self.model_runner.get_weight(name), dtype) for name in used])))
        return {name: sums.get(name) for name in names}

    @property
    def weight_dtype(self) -> str:
        """The dtype the engine holds its weights in ("bfloat16", "float32", ...)."""
        return str(self.model_runner.dtype).removeprefix("torch.")

    # ---- cache and memory -------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop the prefix cache; False (and nothing done) while requests are running or waiting."""
        self._finish_in_flight()
        if self.scheduler.num_unfinished():
            return False
        self.block_manager.flush()
        return True

    def release_memory(self, tags: list[str] | None = None) -> None:
        """Free the KV cache ("kv_cache") and/or move the weights off the GPU ("weights"; no-op on CPU).

        Only while no request is running or waiting (the prefix cache is dropped with the KV cache).
        """
        tags = self._check_tags(tags)
        self._finish_in_flight()
        if self.scheduler.num_unfinished():
            raise RuntimeError(
                f"release_memory: {self.scheduler.num_unfinished()} requests are unfinished; abort or finish them first"
            )
        if "kv_cache" in tags and "kv_cache" not in self._released:
            self.model_runner.free_kv_cache()
            self.block_manager.flush()
        if "weights" in tags:
            self.model_runner.offload_weights()
        self._released |= set(tags)

    def resume_memory(self, tags: list[str] | None = None) -> None:
        tags = self._check_tags(tags)
        if "weights" in tags:
            self.model_runner.reload_weights()
        if "kv_cache" in tags and "kv_cache" in self._released:
            self.model_runner.allocate_kv_cache()
        self._released -= set(tags)

    def _check_tags(self, tags: list[str] | None) -> list[str]:
        tags = list(MEMORY_TAGS) if tags is None else list(tags)
        unknown = [t for t in tags if t not in MEMORY_TAGS]
        if unknown:
            raise ValueError(f"unknown memory tag(s) {unknown}; expected some of {list(MEMORY_TAGS)}")
        return tags

    def _check_resident(self) -> None:
        if self._released:
            raise RuntimeError(
                f"engine memory is released ({sorted(self._released)}); call resume_memory before generating"
            )

    def close(self) -> None:
        """Stop the tensor-parallel worker processes (if any; they also stop when the engine is
        garbage-collected or the process exits). The engine is unusable afterwards."""
        self._in_flight = None
        self.model_runner.close()

    def stats(self) -> dict:
        """Queue sizes, KV blocks, and cumulative token counters (prefill_tokens_computed counts
        recomputation after preemption too; cached_tokens counts prefix-cache hits at every admission)."""
        s = self.scheduler.stats
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "kv_blocks_total": self.block_manager.num_blocks,
            "kv_blocks_used": self.block_manager.num_blocks - self.block_manager.num_free_blocks,
            "prefill_tokens_computed": s.prefill_tokens_computed,
            "cached_tokens": s.cached_tokens,
            "generated_tokens": s.generated_tokens,
            "finished_requests": s.finished_requests,
            "num_preemptions": s.num_preemptions,
            "prefill_steps": s.prefill_steps,
            "decode_steps": s.decode_steps,
        }


def _expand_n(prompts: list[list[int]], params: list[SamplingParams]):
    for prompt, p in zip(prompts, params):
        for i in range(p.n):
            seed = None if p.seed is None else p.seed + i
            yield prompt, dataclasses.replace(p, n=1, seed=seed)


def _eos_token_ids(model_path: str, hf_config) -> set[int]:
    """EOS ids of config.json and generation_config.json (either may be an int or a list)."""
    ids: set[int] = set()
    sources = [hf_config]
    try:
        sources.append(GenerationConfig.from_pretrained(model_path))
    except OSError:
        pass
    for source in sources:
        eos = getattr(source, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids
