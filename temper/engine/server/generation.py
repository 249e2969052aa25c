"""What ``/generate`` does with a request: expand it into engine requests, run them, shape the JSON.

`plan_generate` turns one body (single or batch prompt, ``n`` samples each) into `SubRequest`s in
SGLang's prompt-major order ``[p0·s0 … p0·s(n-1), p1·s0, …]``. `SubRequestRun` adds them to the
`AsyncEngine` and yields ``(sub, RequestOutput)`` as outputs arrive; with ``n > 1`` it first runs one
copy per prompt and adds the other copies once that copy has produced a token, so the prompt is in
the prefix cache for them. If the consumer goes away before the end, every unfinished request is
aborted. `format_output` builds SGLang's ``{"text", "output_ids", "meta_info"}`` object (§4), with
``meta_info.routed_experts`` (base64 int32 [tokens - 1 - routed_experts_start_len, num_hidden_layers,
top_k], `routed_experts.py`) at the end of a request that set ``return_routed_experts``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from temper.engine.routed_experts import encode as encode_routed_experts
from temper.engine.server.async_engine import AsyncEngine, NewRequest, abort_output
from temper.engine.server.protocol import GenerateReqInput, RequestError
from temper.engine.server.sampling import SamplingChoice, build_sampling


@dataclasses.dataclass
class SubRequest:
    """One engine request of an HTTP request, plus what the response needs to know about it."""

    index: int  # position in the response list (prompt-major)
    rid: str
    prompt_ids: list[int]
    sampling: SamplingChoice
    return_logprob: bool = False
    logprob_text: bool = False  # fill the third element of logprob triples
    return_prompt_ids: bool = False
    first_copy: bool = True  # False for copies 1..n-1 of a prompt, added after copy 0 started
    received: float = dataclasses.field(default_factory=time.perf_counter)
    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # weight_versions
    emitted_tokens: int = -1  # tokens in the last streamed chunk
    stream: bool = True  # False: the engine reports only the first token, version changes and the end
    routed_experts_from: int | None = None  # return_routed_experts: the first token position returned

    def new_request(self) -> NewRequest:
        return NewRequest(self.rid, self.prompt_ids, self.sampling.params, self.index, self.stream,
                          self.routed_experts_from is not None)

    def track(self, out: Any) -> None:
        """Record which weight version produced the tokens this output has beyond the last one's (a
        non-streaming request's outputs come only at its first token, version changes and its end)."""
        end = len(out.output_token_ids)
        if self.spans and self.spans[-1]["version"] == out.weight_version:
            self.spans[-1]["end"] = end
        elif not self.spans or end > self.spans[-1]["end"]:
            start = self.spans[-1]["end"] if self.spans else 0
            self.spans.append({"version": out.weight_version, "start": start, "end": end})


# Seeded from os.urandom once: uuid4() reads os.urandom on every call, which costs ~2 ms on
# sandboxed kernels (gVisor) and showed up as the top cost of a 1,000-request load.
_rid_rng = random.Random()


def new_rid() -> str:
    """A fresh 32-hex-digit request id (uuid4-like; unique, not secret)."""
    return f"{_rid_rng.getrandbits(128):032x}"


def vocab_size(engine: Any) -> int:
    return int(engine.hf_config.vocab_size)


def _token_prompts(req: GenerateReqInput, tokenizer: Any, vocab: int) -> tuple[list[list[int]], bool, str]:
    """The prompts as token ids, whether the body is a batch, and the field they came from."""
    if req.input_ids is not None:
        batch = bool(req.input_ids) and isinstance(req.input_ids[0], list)
        prompts = req.input_ids if batch else [req.input_ids]
        field = "input_ids"
    elif req.text is not None:
        batch = isinstance(req.text, list)
        texts = req.text if batch else [req.text]
        prompts = [tokenizer.encode(t) for t in texts]
        field = "text"
    elif req.input_embeds is not None:
        raise RequestError("input_embeds: not supported by temper's engine; send text or input_ids")
    else:
        raise RequestError("Either text, input_ids or input_embeds should be provided.")
    if not prompts:
        raise RequestError(f"{field}: the batch is empty")
    for i, ids in enumerate(prompts):
        loc = f"{field}[{i}]" if batch else field
        if not ids:
            raise RequestError(f"{loc}: input_ids cannot be empty." if field == "input_ids" else f"{loc}: the prompt is empty")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"{loc}: token id {bad} is out of range [0, {vocab})")
    return prompts, batch, field


def _per_prompt(value: Any, count: int, name: str) -> list[Any]:
    """A scalar broadcast to `count` prompts, or a list that must have one entry per prompt."""
    if isinstance(value, list):
        if len(value) != count:
            raise RequestError(f"{name}: expected {count} entries (one per prompt), got {len(value)}")
        return value
    return [value] * count


def _rids(rid: str | list[str] | None, num_prompts: int, n: int, batch: bool) -> list[str]:
    if rid is None:
        return [new_rid() for _ in range(num_prompts * n)]
    if isinstance(rid, str):
        return [rid] if not batch else [f"{rid}_{i}" for i in range(num_prompts * n)]
    base = _per_prompt(rid, num_prompts, "rid")
    rids = base if n == 1 else [f"{r}_{j}" for r in base for j in range(n)]
    if len(set(rids)) != len(rids):
        raise RequestError("rid: duplicate request ids in one batch")
    return rids


def plan_generate(
    req: GenerateReqInput, engine: AsyncEngine, context_len: int, prefix_caching: bool
) -> tuple[list[SubRequest], bool]:
    """Validate a ``/generate`` body and expand it; returns (sub-requests, whether it is a batch)."""
    prompts, batch, field = _token_prompts(req, engine.tokenizer, vocab_size(engine.engine))
    raws = _per_prompt(req.sampling_params, len(prompts), "sampling_params")
    choices = []
    for i, (raw, ids) in enumerate(zip(raws, prompts)):
        loc = f"sampling_params[{i}]" if isinstance(req.sampling_params, list) else "sampling_params"
        choices.append(build_sampling(raw, loc, len(ids), context_len, f"{field}[{i}]" if batch else field))
    n = choices[0].n
    if any(c.n != n for c in choices):
        raise RequestError("sampling_params: The parallel_sample_num should be the same for all samples in sample params.")
    if n > 1 and isinstance(req.return_logprob, list):
        raise RequestError("return_logprob: Cannot use list return_logprob with parallel_sample_num > 1.")
    logprobs = _per_prompt(req.return_logprob, len(prompts), "return_logprob")
    routed_from = _routed_experts_from(req, prompts)
    batch = batch or n > 1
    rids = _rids(req.rid, len(prompts), n, batch)
    subs = []
    for p, (ids, choice) in enumerate(zip(prompts, choices)):
        for j in range(n):
            index = p * n + j
            subs.append(SubRequest(
                index=index, rid=rids[index], prompt_ids=list(ids), sampling=choice,
                return_logprob=bool(logprobs[p]), logprob_text=req.return_text_in_logprobs,
                return_prompt_ids=req.return_prompt_token_ids, first_copy=j == 0 or not prefix_caching,
                stream=bool(req.stream), routed_experts_from=routed_from[p],
            ))
    return subs, batch


def _routed_experts_from(req: GenerateReqInput, prompts: list[list[int]]) -> list[int | None]:
    """Per prompt: where its returned routed experts start (``routed_experts_start_len``), None when
    ``return_routed_experts`` is off for it."""
    wanted = _per_prompt(req.return_routed_experts, len(prompts), "return_routed_experts")
    starts = _per_prompt(req.routed_experts_start_len, len(prompts), "routed_experts_start_len")
    out: list[int | None] = []
    for i, (want, start, ids) in enumerate(zip(wanted, starts, prompts)):
        if want and not 0 <= start <= len(ids):
            raise RequestError(f"routed_experts_start_len[{i}]: {start} is outside the prompt's 0..{len(ids)} tokens")
        out.append(start if want else None)
    return out


def check_n(subs: list[SubRequest], cap: int, field: str) -> None:
    """RequestError when a prompt asks for more than `cap` samples (the server's --max-n)."""
    n = max((s.sampling.n for s in subs), default=1)
    if n > cap:
        raise RequestError(f"{field}: {n} samples per prompt is over this server's limit of {cap} (--max-n)")


class SubRequestRun:
    """Drives the sub-requests of one HTTP request through the engine.

    ``await run.start()`` adds the first copy of every prompt (ValueError if the engine rejects one:
    the caller's 400); ``async for sub, out in run.outputs()`` yields every engine output until all
    have finished (adding copies 1..n-1 of a prompt once copy 0 has produced a token);
    ``run.close()`` aborts whatever is still running and must be called in a ``finally``.
    """

    def __init__(self, engine: AsyncEngine, subs: list[SubRequest]):
        self.engine, self.subs = engine, subs
        self._queue: asyncio.Queue = asyncio.Queue()
        self._later = [s for s in subs if not s.first_copy]
        self._added = [s for s in subs if s.first_copy]
        self._not_started = {s.index for s in self._added}
        self._finished: set[int] = set()

    async def start(self) -> None:
        await self.engine.add_requests([s.new_request() for s in self._added], self._queue)

    async def outputs(self) -> AsyncIterator[tuple[SubRequest, Any]]:
        by_index = {s.index: s for s in self.subs}
        while len(self._finished) < len(self.subs):
            index, out = await self._queue.get()
            if isinstance(out, BaseException):
                raise out
            sub = by_index[index]
            sub.track(out)
            self._not_started.discard(index)
            if out.finished:
                self._finished.add(index)
            yield sub, out
            if self._later and not self._not_started:
                await self._add_later(aborted=out.finished and out.finish_reason == "abort")

    async def _add_later(self, aborted: bool) -> None:
        later, self._later = self._later, []
        if aborted:  # the first copies were aborted before the others began: they end the same way
            for s in later:
                self._queue.put_nowait((s.index, abort_output(s.rid, s.prompt_ids, self.engine.weight_version)))
        else:
            await self.engine.add_requests([s.new_request() for s in later], self._queue)
        self._added += later

    def close(self) -> None:
        unfinished = [s.rid for s in self._added if s.index not in self._finished]
        if unfinished:
            self.engine.abort_soon(unfinished)
        self._finished.update(s.index for s in self._added)


async def collect_final(run: SubRequestRun, on_finished: Any = None) -> list[tuple[SubRequest, Any]]:
    """Run to the end; the final ``(sub, output)`` of every sub-request, in response-list order.
    `on_finished(sub, out)` is called as each one finishes. Closes `run`."""
    final: dict[int, tuple[SubRequest, Any]] = {}
    try:
        async for sub, out in run.outputs():
            if out.finished:
                final[sub.index] = (sub, out)
                if on_finished is not None:
                    on_finished(sub, out)
    finally:
        run.close()
    return [final[i] for i in range(len(final))]


def finish_reason_json(out: Any, length_limit: int) -> dict[str, Any] | None:
    """SGLang's finish_reason object (SGLANG_API.md §4.3), or None while running."""
    if not out.finished:
        return None
    if out.finish_reason == "stop":
        return {"type": "stop", "matched": out.matched_stop}
    if out.finish_reason == "length":
        return {"type": "length", "length": length_limit}
    if out.finish_reason == "abort":
        return {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
    return {"type": out.finish_reason}


class TokenTexts:
    """Decoded text of single tokens, for ``return_text_in_logprobs`` (memoized per token id)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._tokenizer.decode([token_id])
        return text


def format_output(sub: SubRequest, out: Any, token_text: TokenTexts | None = None) -> dict[str, Any]:
    """``{"text", "output_ids", "meta_info"}`` for the current state of `sub` (SGLANG_API.md §4)."""
    meta: dict[str, Any] = {
        "id": sub.rid,
        "finish_reason": finish_reason_json(out, sub.sampling.length_limit),
        "prompt_tokens": len(out.prompt_token_ids),
        "completion_tokens": len(out.output_token_ids),
        "cached_tokens": out.cached_tokens,
        "reasoning_tokens": 0,
        "weight_version": out.weight_version,
        "num_retractions": 0,
    }
    if len(sub.spans) > 1:
        meta["weight_versions"] = [dict(s) for s in sub.spans]
    if sub.return_logprob:
        text = token_text if sub.logprob_text and token_text else None
        meta["output_token_logprobs"] = [
            [lp, tid, text(tid) if text else None] for lp, tid in zip(out.output_logprobs, out.output_token_ids)
        ]
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
    if out.finished:
        meta["e2e_latency"] = time.perf_counter() - sub.received
        if sub.routed_experts_from is not None and out.routed_experts is not None:
            meta["routed_experts"] = encode_routed_experts(out.routed_experts[sub.routed_experts_from :])
    obj: dict[str, Any] = {"text": out.text, "output_ids": list(out.output_token_ids), "meta_info": meta}
    if sub.return_prompt_ids:
        obj["prompt_token_ids"] = list(out.prompt_token_ids)
    return obj


def should_stream(sub: SubRequest, out: Any) -> bool:
    """Whether this output gets its own SSE chunk (every `stream_interval` tokens, and the last)."""
    count = len(out.output_token_ids)
    if out.finished or sub.emitted_tokens < 0 or count - sub.emitted_tokens >= sub.sampling.stream_interval:
        sub.emitted_tokens = count
        return True
    return False

