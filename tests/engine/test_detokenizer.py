"""Incremental detokenization equals a full decode."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from temper.engine.detokenizer import Detokenizer
from temper.engine.sequence import DetokenizerState
from temper.testing.tiny_models import tiny_model_dir
from temper.testing.tokenizer import CORPUS


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))


def incremental(tokenizer, ids, skip_special_tokens=True) -> str:
    detok, state = Detokenizer(tokenizer), DetokenizerState()
    for i in range(1, len(ids) + 1):
        detok.append(state, ids[:i], skip_special_tokens)
    detok.flush(state, ids, skip_special_tokens)
    return state.text


@pytest.mark.parametrize("skip", [True, False])
def test_random_ids_decode_like_a_full_decode(tokenizer, skip):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, 1024, (60,), generator=g).tolist()  # includes ids past the tokenizer
        assert incremental(tokenizer, ids, skip) == tokenizer.decode(ids, skip_special_tokens=skip)


def test_corpus_round_trips(tokenizer):
    text = "".join(CORPUS)[:3000]
    assert incremental(tokenizer, tokenizer.encode(text)) == text


def test_held_back_text_is_reported_once_complete(tokenizer):
    ids = tokenizer.encode("🙂!")
    detok, state = Detokenizer(tokenizer), DetokenizerState()
    deltas = [detok.append(state, ids[:i], True) for i in range(1, len(ids) + 1)]
    assert "".join(deltas) == "🙂!" and all("\ufffd" not in d for d in deltas)


class CountingDetokenizer(Detokenizer):
    """Records the longest window it decodes."""

    longest = 0

    def _decode_many(self, windows, skip_special_tokens):
        self.longest = max(self.longest, *map(len, windows))
        return super()._decode_many(windows, skip_special_tokens)


@pytest.mark.parametrize("skip", [True, False])
def test_long_silent_runs_decode_like_a_full_decode_in_short_windows(tokenizer, skip):
    """Runs of ids that add no text (ids past the tokenizer; special tokens when skipped) between words:
    the text is still the full decode's, and the windows stay short however long the runs."""
    special = tokenizer.all_special_ids[0]
    g = torch.Generator().manual_seed(1)
    ids = []
    for word in ("Hello", " world", "!", " 🙂", " again"):
        ids += tokenizer.encode(word)
        run = int(torch.randint(0, 300, (1,), generator=g))
        ids += torch.randint(len(tokenizer), 5000, (run,), generator=g).tolist() + [special] * (run // 3)
    detok, state = CountingDetokenizer(tokenizer), DetokenizerState()
    for i in range(1, len(ids) + 1):
        detok.append(state, ids[:i], skip)
    detok.flush(state, ids, skip)
    assert state.text == tokenizer.decode(ids, skip_special_tokens=skip)
    assert detok.longest <= 40, detok.longest  # not the runs' hundreds
