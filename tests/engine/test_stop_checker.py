"""Stop conditions and text trimming, fed token by token (no model)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from temper.engine.detokenizer import Detokenizer
from temper.engine.sampling_params import SamplingParams
from temper.engine.sequence import Sequence
from temper.engine.stop_checker import StopChecker
from temper.testing.tiny_models import tiny_model_dir

EOS, PAD = 1002, 1000
THINK_END = 1008  # "</think>": an added token that is not special, so it shows in text


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))


def run(tokenizer, text_or_ids, max_model_len=4096, prompt=(1, 2, 3), **params) -> Sequence:
    """Feed the tokens one by one until the checker finishes the sequence."""
    checker = StopChecker(Detokenizer(tokenizer), [EOS, PAD], max_model_len)
    ids = tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    seq = Sequence("r", list(prompt), SamplingParams(**params), seed=0)
    for token in ids:
        seq.append_token(token, 0.0)
        checker.check(seq)
        if seq.finished:
            break
    return seq


def test_eos_stops_and_is_not_in_text(tokenizer):
    seq = run(tokenizer, tokenizer.encode("hello world") + [EOS, 5, 6])
    assert (seq.finish_reason, seq.matched_stop) == ("stop", EOS)
    assert seq.output_token_ids[-1] == EOS and seq.detok.text == "hello world"


def test_ignore_eos_keeps_going_but_stop_token_ids_still_stop(tokenizer):
    seq = run(tokenizer, [5, EOS, 6, PAD, 7, 8], ignore_eos=True, stop_token_ids=[7])
    assert (seq.finish_reason, seq.matched_stop) == ("stop", 7)
    assert seq.output_token_ids == [5, EOS, 6, PAD, 7]


@pytest.mark.parametrize("no_stop_trim", [False, True])
def test_stop_token_text_is_trimmed_unless_no_stop_trim(tokenizer, no_stop_trim):
    seq = run(tokenizer, "The answer</think> is", stop_token_ids=[THINK_END], no_stop_trim=no_stop_trim)
    assert (seq.finish_reason, seq.matched_stop) == ("stop", THINK_END)
    assert seq.detok.text == ("The answer</think>" if no_stop_trim else "The answer")


def test_stop_string_across_tokens_is_cut(tokenizer):
    seq = run(tokenizer, "hello world. The answer is 42.", stop=["world. The"])
    assert (seq.finish_reason, seq.matched_stop) == ("stop", "world. The")
    assert seq.detok.text == "hello "
    assert tokenizer.decode(seq.output_token_ids) == "hello world. The"  # tokens are kept


def test_stop_string_no_stop_trim_keeps_text(tokenizer):
    seq = run(tokenizer, "hello world. The answer is 42.", stop="rld", no_stop_trim=True)
    assert seq.matched_stop == "rld" and seq.detok.text == "hello world"


def test_earliest_stop_string_wins(tokenizer):
    seq = run(tokenizer, "hello world. The answer is 42.", stop=["answer", "The"])
    assert seq.matched_stop == "The" and seq.detok.text == "hello world. "


def test_max_new_tokens_is_length_and_wins_over_eos(tokenizer):
    seq = run(tokenizer, [5, 6, 7, 8], max_new_tokens=3)
    assert (seq.finish_reason, seq.matched_stop, seq.num_output_tokens) == ("length", None, 3)
    seq = run(tokenizer, [5, 6, EOS], max_new_tokens=3)
    assert (seq.finish_reason, seq.matched_stop) == ("length", None)


def test_max_model_len_is_length(tokenizer):
    seq = run(tokenizer, list(range(5, 20)), max_model_len=8, max_new_tokens=None)
    assert seq.finish_reason == "length" and len(seq) == 8


def test_special_tokens_in_text_only_when_not_skipped(tokenizer):
    ids = [1007, 87, 1001, 88]  # <think> x <|im_start|> y
    assert run(tokenizer, ids, max_new_tokens=4).detok.text == "<think>xy"
    assert run(tokenizer, ids, max_new_tokens=4, skip_special_tokens=False).detok.text == "<think>x<|im_start|>y"


def test_multibyte_characters_come_out_whole(tokenizer):
    text = "café 🙂 中文 résumé"
    seq = run(tokenizer, text, max_new_tokens=len(tokenizer.encode(text)))
    assert seq.detok.text == text


def test_incomplete_character_is_flushed_at_the_end(tokenizer):
    ids = tokenizer.encode("a🙂")[:-1]  # cut inside the emoji's bytes
    seq = run(tokenizer, ids, max_new_tokens=len(ids))
    assert seq.detok.text == tokenizer.decode(ids)


def test_abort_flushes_text(tokenizer):
    checker = StopChecker(Detokenizer(tokenizer), [EOS], 4096)
    seq = Sequence("r", [1], SamplingParams(), seed=0)
    for t in tokenizer.encode("hello world"):
        seq.append_token(t, 0.0)
        checker.check(seq)
    checker.finish(seq, "abort")
    assert (seq.finish_reason, seq.detok.text) == ("abort", "hello world")
