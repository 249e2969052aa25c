"""When a sequence stops, and what its text is when it does.

Checked after every new token, in SGLang's order:
1. max_new_tokens reached -> "length";
2. the token is an EOS id of the model (unless ignore_eos) or in stop_token_ids -> "stop",
   matched_stop = the token id; its text is left out of `text` unless no_stop_trim;
3. a stop string appears in the text -> "stop", matched_stop = the string; `text` is cut before it
   unless no_stop_trim;
4. the sequence fills the model's context (max_model_len tokens) -> "length".
Token ids are never trimmed. Unlike SGLang v0.5.23, ignore_eos does not disable stop_token_ids.

`check_many` checks a step's sequences together (one batched detokenization). With ``text=False``
(offline `LLMEngine.generate`, which reports only finished requests) a sequence without stop strings
is not detokenized per step: its text is decoded once, when it finishes. The same holds for a sequence
added with ``stream=False`` (a non-streaming server request).
"""

from __future__ import annotations

from collections.abc import Iterable

from temper.engine.detokenizer import Detokenizer
from temper.engine.sequence import Sequence


class StopChecker:
    def __init__(self, detokenizer: Detokenizer, eos_token_ids: Iterable[int], max_model_len: int):
        self.detokenizer = detokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len

    def check(self, seq: Sequence) -> None:
        """Update seq's text with its last token and finish it if a stop condition holds."""
        self.check_many([seq])

    def check_many(self, seqs: list[Sequence], text: bool = True) -> None:
        """`check` for each of `seqs` (each got one new token); `text=False`: see the module docstring."""
        pending: dict[bool, list[Sequence]] = {}
        for seq in seqs:
            params, token = seq.params, seq.last_token_id
            if params.max_new_tokens is not None and seq.num_output_tokens >= params.max_new_tokens:
                self.finish(seq, "length")
            elif (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
                self.finish(seq, "stop", token)
            elif (text and seq.stream) or params.stop:
                pending.setdefault(params.skip_special_tokens, []).append(seq)
            elif len(seq) >= self.max_model_len:
                self.finish(seq, "length")
        for skip, group in pending.items():
            new_texts = self.detokenizer.append_many([s.detok for s in group], [s.output_token_ids for s in group], skip)
            for seq, new_text in zip(group, new_texts):
                self._check_text(seq, len(new_text))

    def _check_text(self, seq: Sequence, num_new_chars: int) -> None:
        params = seq.params
        stop = self._find_stop_string(seq, num_new_chars) if num_new_chars and params.stop else None
        if stop is not None:
            index, string = stop
            if not params.no_stop_trim:
                seq.detok.text = seq.detok.text[:index]
            seq.finish("stop", string)
        elif len(seq) >= self.max_model_len:
            self.finish(seq, "length")

    def finish(self, seq: Sequence, reason: str, matched_token: int | None = None) -> None:
        """Finish seq for a token-level reason (length, abort, stop token) and complete its text.

        A matched stop token's text is left out unless no_stop_trim; text the detokenizer held back
        (incomplete UTF-8) is flushed.
        """
        trim = matched_token is not None and not seq.params.no_stop_trim
        self._detokenize(seq, trim_last=trim)
        ids = seq.output_token_ids[:-1] if trim else seq.output_token_ids
        self.detokenizer.flush(seq.detok, ids, seq.params.skip_special_tokens)
        seq.finish(reason, matched_token)

    def _detokenize(self, seq: Sequence, trim_last: bool = False) -> str:
        ids = seq.output_token_ids[:-1] if trim_last else seq.output_token_ids
        return self.detokenizer.append(seq.detok, ids, seq.params.skip_special_tokens)

    @staticmethod
    def _find_stop_string(seq: Sequence, num_new_chars: int) -> tuple[int, str] | None:
        """(index, string) of the first stop string in the text, searching only where new text can
        have completed one."""
        text = seq.detok.text
        longest = max(len(s) for s in seq.params.stop)
        start = max(0, len(text) - num_new_chars - longest + 1)
        found = [(i, s) for s in seq.params.stop if (i := text.find(s, start)) >= 0]
        return min(found) if found else None
