"""OpenAI request bodies (``/v1/completions``, ``/v1/chat/completions``) and the pieces of their
responses that need care: tool-call parsing and safe streaming deltas.

Types are OpenAI's (pydantic's default coercion, as in SGLang's OpenAI layer); unknown fields are
accepted and ignored (logged once). Sampling fields are mapped onto SGLang's native
``sampling_params`` names so that they get exactly the native checks (`to_native_sampling`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from temper.engine.server.generation import new_rid

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _SamplingFields(BaseModel):
    """Fields shared by both OpenAI bodies (OpenAI's plus SGLang's extras)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    no_stop_trim: bool | None = None
    skip_special_tokens: bool | None = None
    return_token_ids: bool = False  # adds prompt_token_ids / response_token_ids to each choice
    return_meta_info: bool = False  # adds the native meta_info to each choice
    rid: str | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] = "auto"
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False


def to_native_sampling(req: _SamplingFields, max_new_tokens: int | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """SGLang native ``sampling_params`` for an OpenAI body (``seed`` → ``sampling_seed``, ...).

    `defaults` (the model's generation_config) fill temperature/top_p/top_k when the body leaves them
    null; `max_new_tokens` None means "up to the context length".
    """
    native = {
        "max_new_tokens": max_new_tokens, "n": req.n, "stop": req.stop,
        "temperature": req.temperature if req.temperature is not None else defaults.get("temperature", 1.0),
        "top_p": req.top_p if req.top_p is not None else defaults.get("top_p"),
        "top_k": req.top_k if req.top_k is not None else defaults.get("top_k"),
        "min_p": req.min_p, "sampling_seed": req.seed, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty, "repetition_penalty": req.repetition_penalty,
        "min_new_tokens": req.min_tokens, "stop_token_ids": req.stop_token_ids, "ignore_eos": req.ignore_eos,
        "no_stop_trim": req.no_stop_trim, "skip_special_tokens": req.skip_special_tokens,
    }
    return {k: v for k, v in native.items() if v is not None or k == "max_new_tokens"}


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split Qwen/Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks out of
    `text`. Returns (remaining content, OpenAI tool_calls); a block that is not valid JSON with a
    string ``name`` stays in the content."""
    calls: list[dict[str, Any]] = []

    def take(match: re.Match) -> str:
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError:
            return match.group(0)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return match.group(0)
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append({
            "id": f"call_{new_rid()[:24]}", "index": len(calls), "type": "function",
            "function": {"name": obj["name"], "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
        })
        return ""

    content = _TOOL_CALL_RE.sub(take, text)
    return (content.strip() if calls else content), calls


class TextDeltas:
    """Turns cumulative text into streaming deltas that never need to be taken back.

    While a request runs, the tail that could still change is held back: a partial match of a stop
    string (trimmed at the end), a trailing replacement character (an incomplete UTF-8 sequence), and,
    with `hold_from` (e.g. ``"<tool_call>"``), everything from that marker on and trailing whitespace.
    """

    def __init__(self, stops: list[str], hold_from: str | None = None):
        self.stops = [s for s in stops if s]
        self.hold_from = hold_from
        self.sent = ""

    def _stable(self, text: str) -> str:
        if self.hold_from:
            at = text.find(self.hold_from)
            text = text if at < 0 else text[:at]
        cut = len(text)
        for marker in self.stops + ([self.hold_from] if self.hold_from else []):
            for k in range(min(len(marker) - 1, len(text)), 0, -1):
                if text.endswith(marker[:k]):
                    cut = min(cut, len(text) - k)
                    break
        stable = text[:cut].rstrip("\ufffd")
        # Whitespace before a tool call is stripped from the final content: hold it until text follows.
        return stable.rstrip() if self.hold_from else stable

    def delta(self, text: str, final: bool = False) -> str:
        """The new text to send for cumulative `text` (the whole of it once `final`)."""
        visible = text if final else self._stable(text)
        if not visible.startswith(self.sent):
            return ""  # the text changed under us (never expected): send nothing rather than garble
        new, self.sent = visible[len(self.sent):], visible
        return new
