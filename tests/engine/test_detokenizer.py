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
