"""The offline test tokenizer: fixed ids, exact round-trips, single-id special tokens, determinism."""

import random
import time

import pytest

from temper.testing.tokenizer import (
    BPE_VOCAB_SIZE,
    SPECIAL_TOKENS,
    TOKENIZER_SIZE,
    build_backend_tokenizer,
    build_tokenizer,
    special_token_ids,
)

ROUND_TRIP_TEXTS = [
    "",
    "12+7=19",
    "What is 345 * 12? The answer is 4140.",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "spaced punctuation , like . this ? and ! that 's n't",
    "tabs\tand\nnewlines\r\n\n\nand  double  spaces",
    "punctuation: !@#$%^&*()_+-=[]{}|;':\",./<>?`~\\",
    "unicode: café naïve 中文 日本語 한국어 Ελληνικά русский 🙂🚀 👨‍👩‍👧",
    "combining: e\u0301 vs \u00e9, zero-width\u200bspace, nbsp\u00a0here",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nhi<|im_end|>\n<think>\nhmm\n</think>\n<tool_call>\n{}\n</tool_call>",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_round_trip_random_unicode(tokenizer):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x250)] + list("\n\t 中文🙂é\u0301")
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_sizes_and_special_ids(tokenizer):
    assert len(tokenizer) == TOKENIZER_SIZE == BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)
    ids = special_token_ids()
    assert list(ids.values()) == list(range(BPE_VOCAB_SIZE, TOKENIZER_SIZE))
    for content, _ in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(content) == ids[content]
        # A single id both alone and glued to surrounding text.
        assert tokenizer.encode(content, add_special_tokens=False) == [ids[content]]
        assert ids[content] in tokenizer.encode(f"ab{content}cd", add_special_tokens=False)


def test_eos_pad_bos_follow_qwen(tokenizer):
    ids = special_token_ids()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == ids["<|im_end|>"]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == ids["<|endoftext|>"]
    assert tokenizer.bos_token is None
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False)  # no bos/eos added


def test_skip_special_tokens_keeps_tool_and_think_markers(tokenizer):
    text = "<|im_start|>assistant\n<think>\nx\n</think>\n<tool_call>\n{}\n</tool_call><|im_end|>"
    decoded = tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True)
    assert decoded == "assistant\n<think>\nx\n</think>\n<tool_call>\n{}\n</tool_call>"


def test_digits_are_one_token_each(tokenizer):
    assert len(tokenizer.encode("12+7=19")) == 7
    assert len(tokenizer.encode("1234567890")) == 10


def test_common_words_are_merged(tokenizer):
    for word in [" the", " answer", " reward", "assistant", "user", "system"]:
        assert len(tokenizer.encode(word)) == 1, word


def test_no_token_type_ids(tokenizer):
    assert set(tokenizer("hello")) == {"input_ids", "attention_mask"}


def test_build_is_deterministic_and_fast():
    start = time.perf_counter()
    first = build_backend_tokenizer().to_str()
    assert time.perf_counter() - start < 2.0
    assert build_backend_tokenizer().to_str() == first
