"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Requests run through the same `SubRequestRun` as ``/generate``; responses have OpenAI's shapes with
SGLang's additions (``matched_stop`` per choice, ``metadata.weight_version`` on chat responses,
``prompt_token_ids``/``response_token_ids`` with ``return_token_ids``). Chat prompts are rendered with
the tokenizer's chat template (``tools`` and ``chat_template_kwargs`` passed through); with tools, the
``<tool_call>{json}</tool_call>`` blocks of the output become ``tool_calls`` and ``finish_reason``
``"tool_calls"``. Errors use OpenAI's shape ``{"object": "error", "message", "type", "param", "code"}``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from temper.engine.server.context import (
    ServerState,
    dumps,
    json_body,
    json_response,
    state_of,
    until_disconnected,
)
from temper.engine.server.generation import (
    SubRequest,
    SubRequestRun,
    check_n,
    collect_final,
    format_output,
    new_rid,
    vocab_size,
)
from temper.engine.server.openai_protocol import (
    TOOL_CALL_OPEN,
    ChatCompletionRequest,
    CompletionRequest,
    TextDeltas,
    parse_tool_calls,
    to_native_sampling,
)
from temper.engine.server.protocol import (
    RequestError,
    format_validation_error,
    note_ignored,
)
from temper.engine.server.sampling import build_sampling

router = APIRouter()


def openai_error(message: str, status_code: int = 400, err_type: str = "BadRequestError", param: str | None = None,
                 code: Any = None) -> Response:
    return json_response({"object": "error", "message": message, "type": err_type, "param": param,
                          "code": status_code if code is None else code}, status_code)


async def _parse(request: Request, model: type[BaseModel]):
    if "application/json" not in request.headers.get("content-type", ""):
        raise RequestError("Content-Type must be application/json")
    data = await json_body(request)
    if not isinstance(data, dict):
        raise RequestError("body: expected a JSON object")
    try:
        parsed = model.model_validate(data)
    except ValidationError as err:
        raise RequestError(format_validation_error(err)) from None
    note_ignored(parsed.model_extra, "openai.")
    return parsed


# ---- models --------------------------------------------------------------------------------------


def _model_card(state: ServerState) -> dict:
    return {"id": state.args.model_name, "object": "model", "created": int(state.started_at), "owned_by": "temper",
            "root": state.args.model, "parent": None, "max_model_len": state.context_len}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return json_response({"object": "list", "data": [_model_card(state_of(request))]})


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response:
    state = state_of(request)
    if model != state.args.model_name:
        return json_response({"error": {"message": f"The model '{model}' does not exist", "type": "invalid_request_error",
                                        "param": "model", "code": "model_not_found"}}, 404)
    return json_response(_model_card(state))


# ---- shared plumbing -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def generation_defaults(model_dir: str) -> dict[str, Any]:
    """temperature/top_p/top_k from the checkpoint's generation_config.json (OpenAI routes' defaults)."""
    path = Path(model_dir) / "generation_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: config[k] for k in ("temperature", "top_p", "top_k") if config.get(k) is not None}


def _plan(state: ServerState, prompts: list[list[int]], req, max_tokens: int | None, logprobs: bool) -> list[SubRequest]:
    """Sub-requests for OpenAI `prompts` × ``n``, in prompt-major order (choice index = position)."""
    native = to_native_sampling(req, max_tokens, generation_defaults(state.args.model))
    base = req.rid or new_rid()
    vocab = vocab_size(state.engine.engine)
    subs = []
    for p, ids in enumerate(prompts):
        if not ids:
            raise RequestError(f"prompt[{p}]: the prompt is empty")
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(f"prompt[{p}]: token ids must be in [0, {vocab})")
        choice = build_sampling(native, "request", len(ids), state.context_len, "prompt" if len(prompts) == 1 else f"prompt[{p}]")
        for j in range(choice.n):
            index = p * choice.n + j
            rid = base if len(prompts) * choice.n == 1 else f"{base}_{index}"
            subs.append(SubRequest(index=index, rid=rid, prompt_ids=list(ids), sampling=choice, return_logprob=logprobs,
                                   first_copy=j == 0 or not state.prefix_caching, stream=bool(req.stream)))
    check_n(subs, state.args.max_n, "n")
    return subs


async def _start(state: ServerState, subs: list[SubRequest]) -> SubRequestRun:
    run = SubRequestRun(state.engine, subs)
    await run.start()
    return run


def _usage(final: list[tuple[SubRequest, Any]]) -> dict[str, Any]:
    prompt = sum(len(out.prompt_token_ids) for sub, out in final if sub.index % sub.sampling.n == 0)
    completion = sum(len(out.output_token_ids) for _, out in final)
    cached = sum(out.cached_tokens for _, out in final)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish(out: Any) -> str | None:
    return out.finish_reason if out.finished else None


def _extras(choice: dict, req, sub: SubRequest, out: Any) -> dict:
    if req.return_token_ids:
        choice.update(prompt_token_ids=list(out.prompt_token_ids), response_token_ids=list(out.output_token_ids))
    if req.return_meta_info:
        choice["meta_info"] = format_output(sub, out)["meta_info"]
    return choice


async def _respond(request: Request, state: ServerState, run: SubRequestRun, build) -> Response:
    final = await until_disconnected(request, collect_final(run, state.observe), run.close)
    if final is None:
        return Response(status_code=499)
    return json_response(build(final))


def _sse_response(events: AsyncIterator[dict], run: SubRequestRun) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {dumps(event)}\n\n"
        except Exception as e:  # noqa: BLE001 -- headers are sent: report in-band
            yield f"data: {dumps({'object': 'error', 'message': str(e), 'type': 'InternalServerError', 'param': None, 'code': 500})}\n\n"
        finally:
            run.close()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


# ---- /v1/completions -----------------------------------------------------------------------------


def _completion_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        return [state.engine.tokenizer.encode(prompt)]
    if prompt and isinstance(prompt[0], str):
        return [state.engine.tokenizer.encode(p) for p in prompt]
    if prompt and isinstance(prompt[0], list):
        return prompt
    return [prompt]


def _completion_logprobs(state: ServerState, out: Any) -> dict:
    tokens = [state.token_texts(t) for t in out.output_token_ids]
    offsets, pos = [], 0
    for text in tokens:
        offsets.append(pos)
        pos += len(text)
    return {"text_offset": offsets, "token_logprobs": list(out.output_logprobs), "tokens": tokens, "top_logprobs": None}


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = state_of(request)
    try:
        req = await _parse(request, CompletionRequest)
        if req.max_tokens is not None and req.max_tokens <= 0:
            raise RequestError(f"max_tokens: must be > 0, got {req.max_tokens}")
        prompts = _completion_prompts(state, req.prompt)
        subs = _plan(state, prompts, req, req.max_tokens, req.logprobs is not None)
        run = await _start(state, subs)
    except ValueError as e:
        return openai_error(str(e))
    model = req.model or state.args.model_name
    head = {"id": subs[0].rid, "object": "text_completion", "created": int(time.time()), "model": model}
    echo = {i: state.engine.tokenizer.decode(p) for i, p in enumerate(prompts)} if req.echo else {}

    def choice(sub: SubRequest, out: Any, text: str, logprobs: bool) -> dict:
        c = {"index": sub.index, "text": text, "logprobs": _completion_logprobs(state, out) if logprobs else None,
             "finish_reason": _finish(out), "matched_stop": out.matched_stop if out.finished else None}
        return _extras(c, req, sub, out) if out.finished else c

    def build(final: list) -> dict:
        choices = [choice(sub, out, echo.get(sub.index // sub.sampling.n, "") + out.text, sub.return_logprob)
                   for sub, out in final]
        return {**head, "choices": choices, "usage": _usage(final)}

    if not req.stream:
        return await _respond(request, state, run, build)

    async def events() -> AsyncIterator[dict]:
        deltas = {s.index: TextDeltas(s.sampling.params.stop) for s in subs}
        pending_echo = {s.index: echo.get(s.index // s.sampling.n, "") for s in subs}
        final = {}
        async for sub, out in run.outputs():
            text = deltas[sub.index].delta(out.text, out.finished)
            if out.finished:
                final[sub.index] = (sub, out)
                state.observe(sub, out)
            if text or out.finished:
                yield {**head, "choices": [choice(sub, out, pending_echo.pop(sub.index, "") + text, False)]}
        if req.stream_options and req.stream_options.include_usage:
            yield {**head, "choices": [], "usage": _usage([final[i] for i in sorted(final)])}

    return _sse_response(events(), run)


# ---- /v1/chat/completions ------------------------------------------------------------------------


def render_chat(state: ServerState, req: ChatCompletionRequest) -> list[int]:
    """The chat prompt's token ids (the tokenizer's chat template, tools and kwargs passed through)."""
    messages = []
    for m in req.messages:
        d = m.model_dump(exclude_none=True)
        d.setdefault("content", None)
        messages.append(d)
    tools = req.tools if req.tool_choice != "none" else None
    kwargs = dict(req.chat_template_kwargs or {})
    try:
        text = state.engine.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=not req.continue_final_message,
            continue_final_message=req.continue_final_message, **kwargs)
    except Exception as e:  # noqa: BLE001 -- jinja raise_exception (unknown role, ...) and template errors
        raise RequestError(f"messages: the chat template failed: {e}") from None
    return state.engine.tokenizer.encode(text, add_special_tokens=False)


def _chat_logprobs(state: ServerState, out: Any) -> dict:
    content = []
    for tid, lp in zip(out.output_token_ids, out.output_logprobs):
        token = state.token_texts(tid)
        content.append({"token": token, "bytes": list(token.encode("utf-8")), "logprob": lp, "top_logprobs": []})
    return {"content": content}


def _message_and_reason(text: str, out: Any, parse_tools: bool) -> tuple[dict, str | None, Any]:
    """(assistant message, finish_reason, matched_stop) of a finished chat output."""
    calls: list = []
    if parse_tools:
        text, calls = parse_tool_calls(text)
    message: dict[str, Any] = {"role": "assistant", "content": text, "reasoning_content": None}
    if calls:
        message["tool_calls"] = calls
        if out.finish_reason == "stop":
            return message, "tool_calls", None
    return message, out.finish_reason, out.matched_stop


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    try:
        req = await _parse(request, ChatCompletionRequest)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens is not None and max_tokens <= 0:
            raise RequestError(f"max_completion_tokens: must be > 0, got {max_tokens}")
        subs = _plan(state, [render_chat(state, req)], req, max_tokens, req.logprobs)
        run = await _start(state, subs)
    except ValueError as e:
        return openai_error(str(e))
    model = req.model or state.args.model_name
    created = int(time.time())
    parse_tools = bool(req.tools) and req.tool_choice != "none"
    head = {"id": subs[0].rid, "created": created, "model": model}

    def build(final: list) -> dict:
        choices = []
        for sub, out in final:
            message, reason, matched = _message_and_reason(out.text, out, parse_tools)
            choices.append(_extras({"index": sub.index, "message": message, "logprobs": _chat_logprobs(state, out) if req.logprobs else None,
                                    "finish_reason": reason, "matched_stop": matched}, req, sub, out))
        return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(final),
                "metadata": {"weight_version": final[-1][1].weight_version}}

    if not req.stream:
        return await _respond(request, state, run, build)
    return _sse_response(_chat_events(state, req, run, subs, head, parse_tools), run)


async def _chat_events(state: ServerState, req: ChatCompletionRequest, run: SubRequestRun, subs: list[SubRequest],
                       head: dict, parse_tools: bool) -> AsyncIterator[dict]:
    """Chunks: the role first, then content deltas; with tools, calls are sent whole at the end."""
    hold = TOOL_CALL_OPEN if parse_tools else None
    deltas = {s.index: TextDeltas(s.sampling.params.stop, hold) for s in subs}

    def chunk(index: int, delta: dict, reason: str | None = None, **extra) -> dict:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason, **extra}]}

    for s in subs:
        yield chunk(s.index, {"role": "assistant", "content": ""})
    final = {}
    async for sub, out in run.outputs():
        tracker = deltas[sub.index]
        if not out.finished:
            text = tracker.delta(out.text)
            if text:
                yield chunk(sub.index, {"content": text})
            continue
        final[sub.index] = (sub, out)
        state.observe(sub, out)
        message, reason, matched = _message_and_reason(out.text, out, parse_tools)
        text = tracker.delta(message["content"], final=True)
        if text:
            yield chunk(sub.index, {"content": text})
        if message.get("tool_calls"):
            yield chunk(sub.index, {"tool_calls": message["tool_calls"]})
        yield chunk(sub.index, {}, reason, matched_stop=matched)
    if req.stream_options and req.stream_options.include_usage:
        yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage([final[i] for i in sorted(final)])}
