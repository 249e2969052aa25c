"""Incremental detokenization of a sequence's output tokens.

Each step decodes only a short window: the text of ``ids[prefix_offset:]`` minus the text of
``ids[prefix_offset:read_offset]`` is the new text (the window keeps a little left context so that
tokenizers which strip leading spaces, and multi-token UTF-8 characters, come out right). New text
that ends in U+FFFD (an incomplete UTF-8 character) is held back until more tokens arrive; `flush()`
emits whatever is held back when the sequence finishes. The result equals
``tokenizer.decode(output_ids, skip_special_tokens=...)`` for byte-level BPE tokenizers.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from temper.engine.sequence import DetokenizerState

_INCOMPLETE = "\ufffd"


class Detokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def append(self, state: DetokenizerState, ids: list[int], skip_special_tokens: bool) -> str:
        """Advance `state` over the output ids `ids` (all of them, not just new ones); return new text."""
        prefix_text = self._decode(ids[state.prefix_offset : state.read_offset], skip_special_tokens)
        new_text = self._decode(ids[state.prefix_offset :], skip_special_tokens)
        if len(new_text) <= len(prefix_text) or new_text.endswith(_INCOMPLETE):
            return ""
        delta = new_text[len(prefix_text) :]
        state.text += delta
        state.prefix_offset, state.read_offset = state.read_offset, len(ids)
        return delta

    def flush(self, state: DetokenizerState, ids: list[int], skip_special_tokens: bool) -> str:
        """Emit text held back for incomplete characters (they stay as U+FFFD)."""
        if state.read_offset >= len(ids):
            return ""
        prefix_text = self._decode(ids[state.prefix_offset : state.read_offset], skip_special_tokens)
        delta = self._decode(ids[state.prefix_offset :], skip_special_tokens)[len(prefix_text) :]
        state.text += delta
        state.prefix_offset = state.read_offset = len(ids)
        return delta
