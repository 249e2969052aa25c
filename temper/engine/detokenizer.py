"""Incremental detokenization of a sequence's output tokens.

Each step decodes only a short window: the text of ``ids[prefix_offset:]`` minus the text of
``ids[prefix_offset:read_offset]`` is the new text (the window keeps a little left context so that
tokenizers which strip leading spaces, and multi-token UTF-8 characters, come out right). New text
that ends in U+FFFD (an incomplete UTF-8 character) is held back until more tokens arrive; `flush()`
emits whatever is held back when the sequence finishes. The result equals
``tokenizer.decode(output_ids, skip_special_tokens=...)`` for byte-level BPE tokenizers.

A run of `SILENT_RUN` or more new ids that leaves the window's text exactly as it was (skipped special
tokens, ids the tokenizer does not know) is dropped from later windows, which keep the left context
before it: otherwise such a run (a policy stuck emitting special tokens, a random model with a small
tokenizer) would grow the window by one id a step, and decoding it would cost time quadratic in the
run's length. Shorter silent runs stay in the window, as a token whose text shows only once the next
one arrives must.

`append_many` advances many sequences at once: when decoding through the tokenizer's Rust backend
(``backend_tokenizer.decode``) gives what ``tokenizer.decode`` gives (checked on sample ids at
construction: no clean-up pass, no overridden decode), each window costs about 2 us instead of HF's
``decode`` overhead of about 10 us. The windows are decoded one by one, not with ``decode_batch``: that
hands a few ids to each of the tokenizer's worker threads, whose wake-ups (against torch's threads for
the cores) cost 80 us at the median for two sequences and now and then several milliseconds (seen: 6
of 300 steps over 1 ms on an idle 2-core machine, 124 of 300 beside a busy process), for no gain on
windows of a few ids.
"""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from temper.engine.sequence import DetokenizerState

_INCOMPLETE = "\ufffd"
SILENT_RUN = 8  # new ids that add no text, from which on they leave the window (see the module docstring)


class Detokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self._backend = _equivalent_backend(tokenizer)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def _decode_many(self, windows: list[list[int]], skip_special_tokens: bool) -> list[str]:
        if self._backend is not None:
            decode = self._backend.decode
            return [decode(w, skip_special_tokens=skip_special_tokens) for w in windows]
        return [self._decode(w, skip_special_tokens) for w in windows]

    def append(self, state: DetokenizerState, ids: list[int], skip_special_tokens: bool) -> str:
        """Advance `state` over the output ids `ids` (all of them, not just new ones); return new text."""
        return self.append_many([state], [ids], skip_special_tokens)[0]

    def append_many(self, states: list[DetokenizerState], id_lists: list[list[int]], skip_special_tokens: bool) -> list[str]:
        """`append` for many sequences, with one batched decode."""
        windows = [window for state, ids in zip(states, id_lists) for window in _windows(state, ids)]
        texts = self._decode_many(windows, skip_special_tokens)
        return [_advance(state, len(ids), texts[2 * i], texts[2 * i + 1])
                for i, (state, ids) in enumerate(zip(states, id_lists))]

    def flush(self, state: DetokenizerState, ids: list[int], skip_special_tokens: bool) -> str:
        """Emit text held back for incomplete characters (they stay as U+FFFD)."""
        if state.read_offset >= len(ids):
            return ""
        context, window = _windows(state, ids)
        prefix_text = self._decode(context, skip_special_tokens)
        delta = self._decode(window, skip_special_tokens)[len(prefix_text) :]
        state.text += delta
        state.prefix_offset = state.context_end = state.read_offset = len(ids)
        return delta


def _windows(state: DetokenizerState, ids: list[int]) -> tuple[list[int], list[int]]:
    """(the left context, the context followed by the ids not yet read): the text of the second minus
    the text of the first is what the new ids add."""
    context = ids[state.prefix_offset : state.context_end]
    return context, context + ids[state.read_offset :]


def _advance(state: DetokenizerState, num_ids: int, prefix_text: str, new_text: str) -> str:
    if new_text == prefix_text and num_ids - state.read_offset >= SILENT_RUN:
        state.read_offset = num_ids  # a silent run: out of later windows
        return ""
    if len(new_text) <= len(prefix_text) or new_text.endswith(_INCOMPLETE):
        return ""
    delta = new_text[len(prefix_text) :]
    state.text += delta
    state.prefix_offset, state.context_end, state.read_offset = state.read_offset, num_ids, num_ids
    return delta


def _equivalent_backend(tokenizer: PreTrainedTokenizerBase):
    """The tokenizer's Rust backend if its decode equals ``tokenizer.decode`` here, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    rng = random.Random(0)
    size = len(tokenizer)
    samples = [[rng.randrange(size) for _ in range(rng.randint(1, 6))] for _ in range(32)]
    try:
        for skip in (True, False):
            if any(backend.decode(ids, skip_special_tokens=skip) != tokenizer.decode(ids, skip_special_tokens=skip)
                   for ids in samples):
                return None
    except Exception:  # noqa: BLE001 (any backend trouble: use HF's decode)
        return None
    return backend
