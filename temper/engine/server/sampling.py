"""SGLang ``sampling_params`` → temper's `SamplingParams`, with SGLang's checks and messages.

`build_sampling` validates one ``sampling_params`` object (SGLANG_API.md §3) for a prompt of a given
length and returns the engine's `SamplingParams` (always ``n=1``: the server expands ``n`` itself)
plus the per-request options that are the server's business (``n``, the configured length limit for
``finish_reason.length``, ``stream_interval``). Every error is a `RequestError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from temper.engine.sampling_params import MAX_STOP_STRINGS, TOP_K_ALL, SamplingParams
from temper.engine.server.protocol import (
    RequestError,
    SamplingParamsIn,
    note_ignored,
    parse_model,
)

GREEDY_BELOW = 1e-6  # SGLang treats 0 <= temperature < 1e-6 as greedy
# Accepted but not implemented: ignored (logged once) unless equal to the neutral value here.
_NEUTRAL: dict[str, Any] = {
    "min_new_tokens": 0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
    "stop_regex": [], "spaces_between_special_tokens": True, "json_schema": "", "regex": "", "ebnf": "",
    "structural_tag": "", "logit_bias": {}, "custom_params": {}, "beam_width": 1, "watermark": {},
}


@dataclasses.dataclass(frozen=True)
class SamplingChoice:
    """What one validated ``sampling_params`` object asks for."""

    params: SamplingParams  # for one engine request (n=1)
    n: int  # parallel samples of the prompt
    length_limit: int  # max_new_tokens as configured, reported in finish_reason {"type": "length"}
    stream_interval: int  # tokens per streamed chunk


def _check(ok: bool, loc: str, message: str) -> None:
    if not ok:
        raise RequestError(f"{loc}: {message}")


def _check_ranges(sp: SamplingParamsIn, loc: str) -> None:
    """SGLang's value checks (sampling_params.py `verify`), same wording, prefixed with `loc`."""
    t = sp.temperature
    _check(t is None or (math.isfinite(t) and t >= 0), loc, f"temperature must be a non-negative finite number, got {t}.")
    _check(sp.top_p is None or 0 < sp.top_p <= 1, loc, f"top_p must be in (0, 1], got {sp.top_p}.")
    _check(sp.min_p is None or 0 <= sp.min_p <= 1, loc, f"min_p must be in [0, 1], got {sp.min_p}.")
    _check(sp.top_k is None or sp.top_k == -1 or sp.top_k >= 1, loc, f"top_k must be -1 (disable) or at least 1, got {sp.top_k}.")
    for name in ("frequency_penalty", "presence_penalty"):
        v = getattr(sp, name)
        _check(v is None or -2 <= v <= 2, loc, f"{name} must be in [-2, 2], got {v}.")
    r = sp.repetition_penalty
    _check(r is None or 0 < r <= 2, loc, f"repetition_penalty must be in (0, 2] (1.0 = no penalty), got {r}.")
    m = sp.max_new_tokens
    _check(m is None or m >= 0, loc, f"max_new_tokens must be at least 0, got {m}.")
    lo = sp.min_new_tokens
    _check(lo is None or 0 <= lo <= (m if m is not None else lo), loc, f"min_new_tokens must be in [0, max_new_tokens({m})], got {lo}.")
    grammars = [g for g in (sp.json_schema, sp.regex, sp.ebnf, sp.structural_tag) if g]
    _check(len(grammars) <= 1, loc, "Only one of json_schema, regex, ebnf, or structural_tag can be set.")
    stops = [sp.stop] if isinstance(sp.stop, str) else sp.stop or []
    _check(len(stops) <= MAX_STOP_STRINGS, loc, f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
    _check(sp.n is None or sp.n >= 1, loc, f"n must be at least 1, got {sp.n}.")
    _check(sp.stream_interval is None or sp.stream_interval >= 1, loc, f"stream_interval must be at least 1, got {sp.stream_interval}.")


def check_context(prompt_len: int, max_new_tokens: int, context_len: int, loc: str = "input") -> None:
    """SGLang's two length checks (tokenizer_manager `_validate_one_request`)."""
    if prompt_len >= context_len:
        raise RequestError(f"{loc}: The input ({prompt_len} tokens) is longer than the model's context length ({context_len} tokens).")
    total = prompt_len + max_new_tokens
    if total > context_len:
        raise RequestError(
            f"{loc}: Requested token count exceeds the model's maximum context length of {context_len} tokens. "
            f"You requested a total of {total} tokens: {prompt_len} tokens from the input messages and "
            f"{max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
            "messages or the completion to fit within the limit."
        )


def build_sampling(
    raw: dict[str, Any] | None, loc: str, prompt_len: int, context_len: int, prompt_loc: str = "input"
) -> SamplingChoice:
    """Validate one SGLang ``sampling_params`` dict (found at `loc` in the body) for a prompt of
    `prompt_len` tokens (found at `prompt_loc`)."""
    sp = parse_model(SamplingParamsIn, raw, prefix=f"{loc}.")
    _check_ranges(sp, loc)
    note_ignored({k: v for k, v in _NEUTRAL.items() if getattr(sp, k) not in (None, v)}, "sampling_params.")
    if sp.max_new_tokens is None:  # explicit null: no cap but the context
        max_new = max(context_len - prompt_len, 0)
    else:
        max_new = sp.max_new_tokens
    check_context(prompt_len, max_new, context_len, prompt_loc)
    temperature = 1.0 if sp.temperature is None else sp.temperature
    top_k = -1 if sp.top_k is None or sp.top_k >= TOP_K_ALL else sp.top_k
    params = SamplingParams(
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=1.0 if sp.top_p is None else sp.top_p,
        top_k=top_k,
        min_p=sp.min_p or 0.0,
        max_new_tokens=max_new,
        stop=[sp.stop] if isinstance(sp.stop, str) else list(sp.stop or []),
        stop_token_ids=list(sp.stop_token_ids or []),
        ignore_eos=bool(sp.ignore_eos),
        n=1,
        seed=sp.sampling_seed,
        skip_special_tokens=True if sp.skip_special_tokens is None else sp.skip_special_tokens,
        no_stop_trim=bool(sp.no_stop_trim),
    )
    try:
        params.validate()
    except ValueError as e:
        raise RequestError(f"{loc}: {e}") from None
    return SamplingChoice(params, sp.n or 1, max_new, sp.stream_interval or 1)
