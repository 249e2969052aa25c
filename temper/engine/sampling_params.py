"""Per-request sampling parameters, named as in SGLang's ``sampling_params`` (see SGLANG_API.md §3).

Departures from SGLang: the per-request seed is the field ``seed`` (SGLang's wire name is
``sampling_seed``; the server maps it), and ``ignore_eos`` disables only the model's EOS ids, not the
request's explicit ``stop_token_ids`` (SGLang v0.5.23 disables both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_STOP_STRINGS = 32
# SGLang's "all tokens" sentinel for top_k; -1 and anything >= vocab mean the same.
TOP_K_ALL = 1 << 30


@dataclass
class SamplingParams:
    """How one request samples and when it stops.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    top_p, top_k, min_p: restrict the candidate set (top_k=-1: all tokens); see `sampler.py`.
    max_new_tokens: cap on generated tokens (finish_reason "length"); None means "up to the context".
    stop: strings that end generation (the text is cut before the match unless no_stop_trim).
    stop_token_ids: extra token ids that end generation (the model's EOS ids always do, unless ignore_eos).
    n: samples per prompt (the server expands n > 1 into n requests; `LLMEngine.generate` does too).
    seed: per-request seed; the same seed gives the same tokens whatever else is in the batch.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    max_new_tokens: int | None = 128
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    seed: int | None = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-6

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its expected range."""
        _check(_is_number(self.temperature) and math.isfinite(self.temperature) and self.temperature >= 0,
               f"temperature must be a non-negative finite number, got {self.temperature!r}.")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}.")
        _check(_is_number(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}.")
        _check(_is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1),
               f"top_k must be -1 (disable) or at least 1, got {self.top_k!r}.")
        _check(self.max_new_tokens is None or (_is_int(self.max_new_tokens) and self.max_new_tokens >= 0),
               f"max_new_tokens must be at least 0 (or None for no cap), got {self.max_new_tokens!r}.")
        _check(_is_int(self.n) and self.n >= 1, f"n must be at least 1, got {self.n!r}.")
        _check(self.seed is None or (_is_int(self.seed) and -(2**63) <= self.seed < 2**64),
               f"seed must be None or a 64-bit integer, got {self.seed!r}.")
        _check(len(self.stop) <= MAX_STOP_STRINGS,
               f"stop: at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(self.stop)}.")
        _check(all(isinstance(s, str) and s for s in self.stop),
               f"stop must be a string or a list of non-empty strings, got {self.stop!r}.")
        _check(all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
               f"stop_token_ids must be a list of non-negative integers, got {self.stop_token_ids!r}.")
        for name in ("ignore_eos", "skip_special_tokens", "no_stop_trim"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be a bool, got {getattr(self, name)!r}.")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
