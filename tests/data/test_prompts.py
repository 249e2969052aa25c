"""Row -> prompt Sample: text vs messages, label/metadata/tools, chat template, row errors."""

from __future__ import annotations

import pytest

from temper.data.errors import DataError
from temper.data.prompts import PromptBuilder, PromptFormat, load_tokenizer

WHERE = "data.jsonl line 7"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
MESSAGES = [{"role": "system", "content": "hi"}, {"role": "user", "content": "what is one plus two"}]


def build(row, tokenizer=None, **fmt):
    return PromptBuilder(PromptFormat(**fmt), tokenizer).build(row, WHERE)


def test_text_prompt_stays_text():
    sample = build({"input": "what is one plus two"})
    assert sample.prompt == "what is one plus two"
    assert sample.label is None and sample.metadata == {}


def test_messages_stay_messages_without_template():
    assert build({"input": MESSAGES}).prompt == MESSAGES


def test_label_metadata_and_tools_keys():
    row = {"q": "what", "answer": "3", "meta": {"source": "gsm8k"}, "fns": TOOLS}
    sample = build(row, input_key="q", label_key="answer", metadata_key="meta", tool_key="fns")
    assert sample.prompt == "what"
    assert sample.label == "3"
    assert sample.metadata == {"source": "gsm8k", "tools": TOOLS}


def test_json_string_metadata_and_tools_are_decoded():
    import json

    sample = build({"input": "x", "metadata": json.dumps({"a": 1}), "tools": json.dumps(TOOLS)})
    assert sample.metadata == {"a": 1, "tools": TOOLS}


def test_null_metadata_and_tools_mean_none():
    assert build({"input": "x", "metadata": None, "tools": None}).metadata == {}


def test_metadata_is_copied_not_shared():
    row = {"input": "x", "metadata": {"a": 1}}
    build(row).metadata["b"] = 2
    assert row["metadata"] == {"a": 1}


def test_chat_template_on_messages_with_tools_and_kwargs(tokenizer):
    sample = build(
        {"input": MESSAGES, "tools": TOOLS},
        tokenizer,
        apply_chat_template=True,
        apply_chat_template_kwargs={"enable_thinking": False},
    )
    assert sample.prompt == (
        "<|tools|> get_weather <|end|> <|system|> hi <|end|> <|user|> what is one plus two <|end|> "
        "<nothink> <|assistant|>"
    )
    assert sample.metadata["tools"] == TOOLS


def test_chat_template_wraps_text_as_user_message(tokenizer):
    sample = build({"input": "hello world"}, tokenizer, apply_chat_template=True)
    assert sample.prompt == "<|user|> hello world <|end|> <|assistant|>"


def test_measured_text_renders_messages_and_counts_tokens(tokenizer):
    builder = PromptBuilder(PromptFormat(), tokenizer)
    sample = builder.build({"input": [{"role": "user", "content": "hello world"}]}, WHERE)
    text = builder.measured_text(sample, WHERE)
    assert text == "<|user|> hello world <|end|> <|assistant|>"
    assert builder.count_tokens([text, "one two three"]) == [5, 3]


def test_apply_chat_template_needs_a_tokenizer():
    with pytest.raises(DataError, match="--apply-chat-template"):
        PromptBuilder(PromptFormat(apply_chat_template=True), None)


def test_apply_chat_template_needs_a_template(tokenizer):
    from copy import deepcopy

    bare = deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="has none"):
        PromptBuilder(PromptFormat(apply_chat_template=True), bare)


def test_load_tokenizer(tokenizer_dir, tmp_path):
    assert load_tokenizer(tokenizer_dir, needed_by="--apply-chat-template").chat_template
    with pytest.raises(DataError, match="--hf-checkpoint is not set"):
        load_tokenizer(None, needed_by="--rollout-max-prompt-len")
    with pytest.raises(DataError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path), needed_by="--apply-chat-template")


@pytest.mark.parametrize(
    "row, fmt, reason, parts",
    [
        (
            {"question": "x", "answer": 1},
            {},
            "missing_field",
            ["'input'", "missing", "['answer', 'question']", "--input-key"],
        ),
        ({"input": 7}, {}, "wrong_type", ["'input'", "got int 7", "expected text or a list"]),
        ({"input": "  "}, {}, "empty_prompt", ["'input'", "empty prompt"]),
        ({"input": []}, {}, "empty_prompt", ["'input'", "empty message list"]),
        ({"input": ["hi"]}, {}, "wrong_type", ["'input[0]'", "got str 'hi'", "message dict"]),
        ({"input": [{"content": "hi"}]}, {}, "wrong_type", ["'input[0]'", "without a string 'role'"]),
        ({"input": [{"role": "user"}]}, {}, "missing_field", ["'input[0]'", "without 'content'"]),
        ({"input": [{"role": "user", "content": 3}]}, {}, "wrong_type", ["'input[0].content'", "int 3"]),
        ({"input": "x", "metadata": [1, 2]}, {}, "wrong_type", ["'metadata'", "got list [1, 2]", "dict"]),
        ({"input": "x", "metadata": "{oops"}, {}, "wrong_type", ["'metadata'", "not JSON"]),
        ({"input": "x", "tools": {"name": "f"}}, {}, "wrong_type", ["'tools'", "expected a list of JSON-schema tool"]),
        ({"input": "x", "tools": ["f"]}, {}, "wrong_type", ["'tools'", "['f']"]),
        (
            {"input": "x"},
            {"label_key": "answer"},
            "missing_field",
            ["'answer'", "missing label", "['input']", "--label-key"],
        ),
    ],
)
def test_row_errors(row, fmt, reason, parts, assert_message):
    with pytest.raises(DataError) as info:
        build(row, **fmt)
    assert info.value.reason == reason and info.value.skippable
    assert_message(info.value, WHERE, *parts, "--skip-invalid-data")


def test_chat_template_failure_is_a_row_error(tokenizer, assert_message):
    with pytest.raises(DataError) as info:
        build({"input": [{"role": "robot", "content": "beep"}]}, tokenizer, apply_chat_template=True)
    assert info.value.reason == "chat_template"
    assert_message(info.value, WHERE, "'input'", "chat template failed", "unknown role robot")


def test_format_from_args(make_args):
    args = make_args(input_key="q", label_key="a", apply_chat_template=True, apply_chat_template_kwargs=None)
    fmt = PromptFormat.from_args(args)
    assert (fmt.input_key, fmt.label_key, fmt.apply_chat_template, dict(fmt.apply_chat_template_kwargs)) == (
        "q",
        "a",
        True,
        {},
    )
    assert PromptFormat.from_args(object()) == PromptFormat()
