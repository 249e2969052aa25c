"""The default per-sample generate function and the process-wide rollout state it runs in.

`generate(args, sample, sampling_params)` is slime's inner generate (`--custom-generate-function-path`
replaces it): one `/generate` call to the router for one sample, appended to the sample with
`Sample.append_response_tokens`. `GenerateState` (slime's singleton of the same name) holds what
every generate call shares: the tokenizer, the `EngineClient` of the router, the semaphore that caps
requests in flight, the default sampling parameters and the abort flag.

Where the router is: `args.sglang_router_ip` / `args.sglang_router_port` (set by `RolloutManager`,
or by the user, as slime's plug-ins expect), else `--sglang-router-ip/--sglang-router-port`
pass-through values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from temper.rollout.engine_client import EngineClient, EngineError
from temper.rollout.routed_experts import decode as decode_routed_experts
from temper.rollout.routed_experts import routing_shape
from temper.rollout.router_flags import engine_api_key
from temper.types import Sample

logger = logging.getLogger(__name__)

SEED_MODULUS = 2**63 - 1  # sampling_seed is a signed 64-bit int on the wire


def router_url(args: Any) -> str | None:
    """``http://ip:port`` of the router `args` names, or None if it names none."""
    ip, port = getattr(args, "sglang_router_ip", None), getattr(args, "sglang_router_port", None)
    engine = getattr(args, "engine", None)
    if ip is None and engine is not None:
        ip, port = engine.sglang.get("router_ip"), engine.sglang.get("router_port")
    if ip is None or port is None:
        return None
    return f"http://{ip}:{port}"


def default_sampling_params(args: Any, *, evaluation: bool = False) -> dict[str, Any]:
    """SGLang sampling params from the rollout flags (eval flags override where set).

    Always `no_stop_trim`: the stop string stays in the response text, as the stop token stays in
    the ids. `max_new_tokens` None (no --rollout-max-response-len) means "up to the context length".
    """

    def pick(name: str, eval_name: str) -> Any:
        value = getattr(args, eval_name, None) if evaluation else None
        return getattr(args, name) if value is None else value

    params = {
        "temperature": pick("rollout_temperature", "eval_temperature"),
        "top_p": pick("rollout_top_p", "eval_top_p"),
        "top_k": pick("rollout_top_k", "eval_top_k"),
        "max_new_tokens": pick("rollout_max_response_len", "eval_max_response_len"),
        "stop": getattr(args, "rollout_stop", None),
        "stop_token_ids": getattr(args, "rollout_stop_token_ids", None),
        "skip_special_tokens": bool(getattr(args, "rollout_skip_special_tokens", False)),
        "no_stop_trim": True,
    }
    return {k: v for k, v in params.items() if v is not None or k == "max_new_tokens"}


def sampling_seed(base_seed: int, group_index: int | None, position: int, salt: str = "") -> int:
    """A deterministic per-sample seed: the same (seed, group, position in group) gives the same value
    in every run and process, independent of the order requests are sent in."""
    key = f"{base_seed}/{salt}/{group_index}/{position}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % SEED_MODULUS


class RequestClock:
    """When the default generate function's requests left and came back (monotonic seconds), for the
    rollout's timing metrics: how long the requests took to go out and the answers to come in."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.first_sent = self.last_sent = self.first_answer = self.last_answer = None
        self.requests = self.samples = 0

    def sent(self, samples: int = 1) -> None:
        """One request, for `samples` samples, went out."""
        now = time.monotonic()
        self.first_sent = now if self.first_sent is None else self.first_sent
        self.last_sent = now
        self.requests += 1
        self.samples += samples

    def answered(self) -> None:
        now = time.monotonic()
        self.first_answer = now if self.first_answer is None else self.first_answer
        self.last_answer = now

    def metrics(self, start: float) -> dict[str, float]:
        """Seconds from `start` (the rollout's start) to the first and last request sent and answer
        received; empty when no request went through the default generate function."""
        if self.first_sent is None or self.last_answer is None:
            return {}
        return {"rollout/requests": float(self.requests), "rollout/requested_samples": float(self.samples),
                "rollout/first_request_sent_s": self.first_sent - start, "rollout/last_request_sent_s": self.last_sent - start,
                "rollout/first_answer_s": self.first_answer - start, "rollout/last_answer_s": self.last_answer - start}


class GenerateState:
    """What all generate calls of this process share. Build with `get_state(args)`.

    - `semaphore`: at most `sglang_server_concurrency × num_engines` generate calls in flight;
    - `aborted`: set by the rollout when it has enough groups; generate calls not yet sent return
      their sample ABORTED without a request;
    - `engine_urls`: the engines behind the router (from its ``/workers``), for aborts.
    """

    def __init__(self, args: Any, url: str | None, num_engines: int, engine_urls: list[str]) -> None:
        self.args = args
        self.url = url
        self.num_engines = num_engines
        self.engine_urls = engine_urls
        self.concurrency = int(getattr(args, "sglang_server_concurrency", 512)) * num_engines
        self.semaphore = asyncio.Semaphore(self.concurrency)
        self._slot_lock = asyncio.Lock()  # one multi-slot acquisition at a time (see `slots`)
        self.client = EngineClient(url, max_connections=self.concurrency) if url else None
        self.aborted = False
        self._tokenizer = None
        self.prompt_ids: OrderedDict[str, list[int]] = OrderedDict()  # recent prompts' ids (see prompt_token_ids)
        self.clock = RequestClock()

    @contextlib.asynccontextmanager
    async def slots(self, count: int) -> AsyncIterator[None]:
        """Hold `count` (at most `concurrency`) slots of the semaphore. Acquisitions of several slots take
        turns, so two of them never each hold part of what both wait for."""
        if not 0 < count <= self.concurrency:
            raise ValueError(f"slots: count must be in [1, {self.concurrency}], got {count}")
        held = 0
        try:
            async with self._slot_lock:
                while held < count:
                    await self.semaphore.acquire()
                    held += 1
            yield
        finally:
            for _ in range(held):
                self.semaphore.release()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from temper.data import load_tokenizer

            self._tokenizer = load_tokenizer(
                getattr(self.args, "hf_checkpoint", None), needed_by="the default generate function"
            )
        return self._tokenizer

    def require_client(self) -> EngineClient:
        if self.client is None:
            raise RuntimeError(
                "no router to send generate requests to: set args.sglang_router_ip and args.sglang_router_port "
                "(RolloutManager does), or pass --sglang-router-ip/--sglang-router-port"
            )
        return self.client

    async def engine_counters(self) -> dict[str, float] | None:
        """temper engines' cumulative step counters (`/v1/loads`: prefill and decode steps, the loop's
        seconds inside them, busy periods), summed over `engine_urls`, and the latest busy period's start
        and end (`busy_since`, `idle_since`: Unix seconds, the latest over the engines); None when there are none or one does not
        report them (an SGLang engine) or does not answer."""
        if not self.engine_urls:
            return None
        keys = ("num_prefill_steps", "num_decode_steps", "step_busy_s", "num_preemptions", "num_busy_periods")
        total = dict.fromkeys(keys, 0.0) | {"busy_since": 0.0, "idle_since": 0.0}
        for url in self.engine_urls:
            try:
                async with EngineClient(url, retries=0, timeout=10.0, api_key=engine_api_key(self.args)) as client:
                    loads = await client.loads()
            except (EngineError, ValueError, KeyError) as e:
                logger.debug("engine counters of %s: %s", url, e)
                return None
            for entry in loads:
                if not all(k in entry for k in keys):
                    return None
                for k in keys:
                    total[k] += float(entry[k])
                # the latest busy period's start and end over the engines (Unix seconds)
                total["busy_since"] = max(total["busy_since"], float(entry.get("busy_since", 0.0)))
                total["idle_since"] = max(total["idle_since"], float(entry.get("idle_since", 0.0)))
        return total

    async def abort_engines(self) -> None:
        """POST abort_all to every engine (the router's current ``/workers``; the router itself when it
        does not list them); errors are logged. Without a router (custom generate functions only)
        there is nothing to send."""
        if self.client is not None:
            self.engine_urls = await _discover_engines(self.url) or self.engine_urls
        if self.engine_urls:
            targets = [EngineClient(u, retries=1, api_key=engine_api_key(self.args)) for u in self.engine_urls]
        elif self.client is not None:
            targets = [self.client]
        else:
            return
        results = await asyncio.gather(*(c.abort_all() for c in targets), return_exceptions=True)
        for client, result in zip(targets, results):
            if isinstance(result, Exception):
                logger.warning("abort_all on %s failed: %s", client.base_url, result)
            if client is not self.client:
                await client.aclose()


_state: GenerateState | None = None
_state_lock: asyncio.Lock | None = None


async def get_state(args: Any) -> GenerateState:
    """The process's `GenerateState` for `args`, rebuilt when `args` or its router changes.

    The number of engines comes from the router's ``/workers`` (1 if it cannot tell), or from
    `rollout_num_gpus // rollout_num_gpus_per_engine` when there is no router.
    """
    global _state, _state_lock
    url = router_url(args)
    if _state is not None and _state.args is args and _state.url == url:
        return _state
    _state_lock = _state_lock or asyncio.Lock()
    async with _state_lock:  # concurrent first calls build one state
        if _state is None or _state.args is not args or _state.url != url:
            engine_urls = await _discover_engines(url) if url else []
            num_engines = len(engine_urls) or _engines_from_args(args)
            if _state is not None and _state.client is not None:
                await _state.client.aclose()
            _state = GenerateState(args, url, num_engines, engine_urls)
    return _state


async def _discover_engines(url: str) -> list[str]:
    async with EngineClient(url, retries=2) as client:
        try:
            return await client.workers()
        except (EngineError, ValueError, KeyError) as e:
            logger.warning("router %s did not list its workers (%s); aborts go to the router itself", url, e)
            return []


def _engines_from_args(args: Any) -> int:
    gpus = getattr(args, "rollout_num_gpus", None) or 0
    return max(gpus // max(int(getattr(args, "rollout_num_gpus_per_engine", 1)), 1), 1)


PROMPT_CACHE_SIZE = 4096  # prompts whose ids GenerateState keeps (a group's n samples share one)


def prompt_token_ids(state: GenerateState, sample: Sample) -> list[int]:
    """The prompt's ids: text as it is, a message list through the chat template (with the sample's
    tools). Without special tokens added, as the rendered template already carries them. The n samples
    of a group share their prompt, so it is rendered and tokenized once (a fresh list for each)."""
    prompt, tools = sample.prompt, sample.metadata.get("tools")
    key = prompt if isinstance(prompt, str) and tools is None else json.dumps([prompt, tools], sort_keys=True, default=str)
    ids = state.prompt_ids.get(key)
    if ids is None:
        if isinstance(prompt, list):
            kwargs = dict(getattr(state.args, "apply_chat_template_kwargs", None) or {})
            prompt = state.tokenizer.apply_chat_template(
                prompt, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
            )
        ids = state.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        state.prompt_ids[key] = ids
        if len(state.prompt_ids) > PROMPT_CACHE_SIZE:
            state.prompt_ids.popitem(last=False)
    return list(ids)


async def generate(args: Any, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    """slime's default generate: one `/generate` call to the router, appended to `sample`.

    Starts from the prompt (tokenized here when `sample.tokens` is empty) or continues a partially
    generated sample from its tokens with the rest of the token budget (partial rollout; with
    `--mask-offpolicy-in-partial-rollout` the earlier response tokens get loss mask 0). Sends the
    sample's group as routing key. Sets tokens, response, response_length, rollout_log_probs,
    status (from finish_reason), weight_versions and cached_tokens.
    """
    await generate_many(args, [sample], [sampling_params])
    return sample


async def generate_many(args: Any, samples: list[Sample], sampling_params: list[dict[str, Any]]) -> list[Sample]:
    """`generate` for several samples at once: one batched `/generate` call per routing key (a group's
    samples share theirs), each sample with its own sampling parameters. A rollout's requests then reach
    the engines a group at a time instead of a sample at a time (the rollout process's HTTP client and
    the in-process router cost about a millisecond each per request). Returns `samples`."""
    state = await get_state(args)
    by_key: dict[str | None, list[tuple[Sample, dict[str, Any]]]] = {}
    for sample, params in zip(samples, sampling_params, strict=True):
        params = _request_params(args, state, sample, params)
        if params is not None:
            by_key.setdefault(routing_key(sample), []).append((sample, params))
    await asyncio.gather(*(_send(state, key, todo) for key, todo in by_key.items()))
    return samples


def _request_params(args: Any, state: GenerateState, sample: Sample, sampling_params: dict[str, Any]) -> dict | None:
    """The sampling parameters of `sample`'s request (the rest of its token budget), its prompt tokenized
    and partial-rollout mask set; None when its budget is spent (then it is TRUNCATED)."""
    if not sample.tokens:
        sample.tokens = prompt_token_ids(state, sample)
    params = dict(sampling_params)
    if params.get("max_new_tokens") is not None:
        params["max_new_tokens"] -= sample.response_length
        if params["max_new_tokens"] <= 0:
            sample.status = Sample.Status.TRUNCATED
            return None
    if sample.response_length and getattr(args, "mask_offpolicy_in_partial_rollout", False):
        sample.loss_mask = [0] * sample.response_length
    return params


async def _send(state: GenerateState, key: str | None, todo: list[tuple[Sample, dict[str, Any]]]) -> None:
    client = state.require_client()
    if len(todo) == 1:
        payload = {"input_ids": todo[0][0].tokens, "sampling_params": todo[0][1], "return_logprob": True}
    else:
        payload = {"input_ids": [s.tokens for s, _ in todo], "sampling_params": [p for _, p in todo],
                   "return_logprob": True}
    routing = None
    if getattr(state.args, "use_rollout_routing_replay", False):  # R3: the engine's routed experts too
        routing = routing_shape(getattr(state.args, "hf_checkpoint", None) or "")
        payload["return_routed_experts"] = True
    state.clock.sent(len(todo))
    output = await client.generate(payload, routing_key=key)
    state.clock.answered()
    outputs = [output] if len(todo) == 1 else output
    if not isinstance(outputs, list) or len(outputs) != len(todo):
        raise EngineError(client.base_url, f"/generate: a batch of {len(todo)} prompts got {outputs!r:.200} back")
    for (sample, _), out in zip(todo, outputs):
        append_output(sample, out, routing)


def routing_key(sample: Sample) -> str | None:
    """The sample's session, else its prompt group: requests with one key go to one engine."""
    if sample.session_id:
        return sample.session_id
    return None if sample.group_index is None else f"group-{sample.group_index}"


def append_output(sample: Sample, output: dict[str, Any], routing: tuple[int, int] | None = None) -> None:
    """Append one SGLang `/generate` response object to `sample` (tokens, log-probs, status, version).
    `routing` (num_hidden_layers, top_k): the request asked for the routed experts, which then replace
    the sample's `rollout_routed_experts` (see `routed_experts.py`)."""
    meta = output.get("meta_info", {})
    ids = list(output.get("output_ids") or [])
    triples = meta.get("output_token_logprobs")
    log_probs = [float(t[0]) for t in triples] if triples is not None else None
    if log_probs is not None and len(log_probs) != len(ids):
        raise ValueError(
            f"engine returned {len(ids)} output ids but {len(log_probs)} log-probs (meta_info {meta.get('id')})"
        )
    if log_probs is None and sample.rollout_log_probs is not None:
        log_probs = [0.0] * len(ids)
    finish = (meta.get("finish_reason") or {}).get("type")
    sample.append_response_tokens(
        ids, log_probs, finish_reason=finish, text=output.get("text", ""), weight_version=meta.get("weight_version")
    )
    sample.cached_tokens += int(meta.get("cached_tokens") or 0)
    if routing is not None:
        if "routed_experts" not in meta:
            raise ValueError(
                f"--use-rollout-routing-replay: the engine's answer (meta_info {meta.get('id')}) has no "
                "routed_experts; temper's engine returns them for MoE models, an SGLang server with "
                "--enable-return-routed-experts"
            )
        sample.rollout_routed_experts = decode_routed_experts(meta["routed_experts"], len(sample.tokens) - 1, *routing)
