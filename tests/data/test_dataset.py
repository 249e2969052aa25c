"""PromptDataset: loading, slices, length filter, skip mode, per-epoch shuffle, streaming."""

from __future__ import annotations

import logging
import random

import pytest

from temper.data.dataset import PromptDataset
from temper.data.errors import DataError
from temper.data.prompts import PromptFormat

LABELED = PromptFormat(label_key="label")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather"}}]


def labels(dataset: PromptDataset) -> list:
    return [dataset[i].label for i in range(len(dataset))]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize(
    "prompts",
    [["what is one", "hi"], [[{"role": "user", "content": "what is one"}], [{"role": "user", "content": "hi"}]]],
)
def test_loads_jsonl_and_parquet_alike(fmt, prompts, write_jsonl, write_parquet):
    rows = [{"input": p, "label": str(i), "metadata": {"k": i}, "tools": TOOLS} for i, p in enumerate(prompts)]
    path = write_jsonl(rows) if fmt == "jsonl" else write_parquet(rows)
    dataset = PromptDataset(path, LABELED)
    assert len(dataset) == 2
    assert [(s.prompt, s.label, s.metadata) for s in (dataset[0], dataset[1])] == [
        (prompts[0], "0", {"k": 0, "tools": TOOLS}),
        (prompts[1], "1", {"k": 1, "tools": TOOLS}),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("suffix, expected", [("@[2:5]", [2, 3, 4]), ("@[-3:]", [7, 8, 9]), ("@[:4]", [0, 1, 2, 3])])
def test_row_slices(fmt, suffix, expected, write_jsonl, write_parquet, rows_of):
    path = write_jsonl(rows_of(10)) if fmt == "jsonl" else write_parquet(rows_of(10))
    assert labels(PromptDataset(path + suffix, LABELED)) == expected


def test_max_prompt_len_filter_counts_and_logs(write_jsonl, tokenizer, caplog):
    rows = [{"input": "one two", "label": 0}, {"input": "one two three four", "label": 1}, {"input": "one", "label": 2}]
    with caplog.at_level(logging.WARNING, logger="temper.data"):
        dataset = PromptDataset(write_jsonl(rows), LABELED, tokenizer=tokenizer, max_prompt_len=2)
    assert labels(dataset) == [0, 2]
    assert dataset.num_filtered_too_long == 1
    assert "dropped 1 of 3 prompts longer than --rollout-max-prompt-len=2" in caplog.text


def test_max_prompt_len_counts_chat_template_tokens(write_jsonl, tokenizer):
    # "<|user|> hello <|end|> <|assistant|>" is 4 tokens: the limit applies after the template.
    path = write_jsonl([{"input": "hello"}, {"input": [{"role": "user", "content": "hello world"}]}])
    templated = PromptDataset(path, PromptFormat(apply_chat_template=True), tokenizer=tokenizer, max_prompt_len=4)
    assert [s.prompt for s in (templated[i] for i in range(len(templated)))] == ["<|user|> hello <|end|> <|assistant|>"]
    # message prompts left as messages are measured through the template too
    raw = PromptDataset(path, tokenizer=tokenizer, max_prompt_len=4)
    assert len(raw) == 1 and raw.num_filtered_too_long == 1


def test_everything_filtered_is_an_error(write_jsonl, tokenizer, assert_message):
    with pytest.raises(DataError) as info:
        PromptDataset(write_jsonl([{"input": "one two three"}]), tokenizer=tokenizer, max_prompt_len=1)
    assert_message(info.value, "data.jsonl", "no usable prompts", "1 longer than --rollout-max-prompt-len")


def test_max_prompt_len_without_tokenizer(write_jsonl):
    with pytest.raises(DataError, match="--hf-checkpoint"):
        PromptDataset(write_jsonl([{"input": "x"}]), max_prompt_len=4)


BAD_ROWS = [
    {"input": "good 0", "label": 0},
    '{"input": broken',
    {"question": "no input key", "label": 1},
    {"input": 5, "label": 2},
    {"input": "", "label": 3},
    {"input": "good 1", "label": 4},
    b'{"input": "caf\xe9", "label": 5}',
]


def test_first_bad_row_raises_without_skip(write_jsonl, assert_message):
    with pytest.raises(DataError) as info:
        PromptDataset(write_jsonl(BAD_ROWS), LABELED)
    assert_message(info.value, "data.jsonl line 2", "malformed JSON")


def test_skip_invalid_counts_per_reason_and_logs(write_jsonl, caplog):
    with caplog.at_level(logging.DEBUG, logger="temper.data"):
        dataset = PromptDataset(write_jsonl(BAD_ROWS), LABELED, skip_invalid=True)
    assert labels(dataset) == [0, 4]
    assert dict(dataset.skipped.counts) == {
        "malformed_json": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "empty_prompt": 1,
        "bad_encoding": 1,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "5 invalid rows" in warnings[0] and "bad_encoding=1" in warnings[0] and "line 2" in warnings[0]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("skipped invalid row" in m for m in debug) == 5


def test_skip_invalid_with_nothing_left_is_an_error(write_jsonl):
    with pytest.raises(DataError, match=r"no usable prompts among 2 rows: 2 invalid rows \(missing_field=2\)"):
        PromptDataset(write_jsonl([{"q": 1}, {"q": 2}]), skip_invalid=True)


def test_skip_does_not_hide_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PromptDataset(str(tmp_path / "missing.jsonl"), skip_invalid=True)


def test_skipped_chat_template_failure_is_counted(write_jsonl, tokenizer):
    rows = [{"input": [{"role": "robot", "content": "x"}]}, {"input": "hi"}]
    dataset = PromptDataset(
        write_jsonl(rows), PromptFormat(apply_chat_template=True), tokenizer=tokenizer, skip_invalid=True
    )
    assert len(dataset) == 1 and dataset.skipped.counts == {"chat_template": 1}


def test_no_shuffle_is_file_order(write_jsonl, rows_of):
    dataset = PromptDataset(write_jsonl(rows_of(6)))
    assert dataset.order(0) == dataset.order(3) == list(range(6))


def test_shuffle_is_deterministic_per_epoch_and_differs_between_epochs(write_jsonl, rows_of):
    path = write_jsonl(rows_of(50))
    first = PromptDataset(path, shuffle=True, seed=7)
    random.seed(123)  # global RNG state must not matter
    orders = [list(first.order(e)) for e in range(3)]
    random.seed(999)
    second = PromptDataset(path, shuffle=True, seed=7)
    assert [second.order(e) for e in (2, 0, 1)] == [orders[2], orders[0], orders[1]]
    assert orders[0] != orders[1] != orders[2]
    assert sorted(orders[0]) == list(range(50)) and orders[0] != list(range(50))
    expected = list(range(50))
    random.Random(7 + 1).shuffle(expected)
    assert orders[1] == expected
    assert PromptDataset(path, shuffle=True, seed=8).order(0) == orders[1]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_streaming_matches_eager(fmt, write_jsonl, write_parquet, tokenizer):
    rows = [
        {"input": "one two three" if i % 3 == 0 else f"hello {i}", "label": i, "metadata": {"i": i}} for i in range(12)
    ]
    rows[4] = {"input": 7, "label": 4}
    path = (write_jsonl(rows) if fmt == "jsonl" else write_parquet(rows[:4] + rows[5:])) + "@[1:]"
    kwargs = dict(tokenizer=tokenizer, max_prompt_len=2, skip_invalid=True)
    eager = PromptDataset(path, LABELED, **kwargs)
    lazy = PromptDataset(path, LABELED, streaming=True, **kwargs)
    assert len(lazy) == len(eager) > 0
    assert [lazy[i].to_dict() for i in range(len(lazy))] == [eager[i].to_dict() for i in range(len(eager))]
    assert lazy.num_filtered_too_long == eager.num_filtered_too_long == 3
    assert lazy._samples == []  # only positions are held


def test_from_args_reads_flags_and_loads_tokenizer(write_jsonl, rows_of, make_args, tokenizer_dir):
    args = make_args(
        prompt_data=write_jsonl(rows_of(10)) + "@[:6]",
        label_key="label",
        apply_chat_template=True,
        hf_checkpoint=tokenizer_dir,
        rollout_shuffle=True,
        rollout_seed=3,
        rollout_max_prompt_len=100,
    )
    dataset = PromptDataset.from_args(args)
    assert len(dataset) == 6 and dataset.shuffle and dataset.seed == 3
    assert dataset[0].prompt.startswith("<|user|> prompt 0")


def test_from_args_without_prompt_data(make_args):
    with pytest.raises(DataError, match="--prompt-data: not set"):
        PromptDataset.from_args(make_args())
