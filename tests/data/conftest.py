"""Fixtures for the data tests: a tiny word-level tokenizer with a chat template, file writers, args."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# A deliberately simple template: one "<|role|> content <|end|>" per message, tool names, an optional
# "<nothink>" from apply_chat_template_kwargs, and raise_exception on unknown roles.
CHAT_TEMPLATE = (
    "{%- if tools %}<|tools|> {% for t in tools %}{{ t['function']['name'] }} {% endfor %}<|end|> {% endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{%- if enable_thinking is defined and not enable_thinking %}<nothink> {% endif %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|tools|>", "<|end|>", "<nothink>"]
WORDS = [
    "what",
    "is",
    "one",
    "two",
    "three",
    "plus",
    "minus",
    "the",
    "answer",
    "hi",
    "hello",
    "world",
    "weather",
    "in",
    "paris",
    "get_weather",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Hugging Face tokenizer folder: whitespace word-level vocab, [UNK] for anything else."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<|end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    tokenizer.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture
def write_jsonl(tmp_path: Path):
    """write_jsonl(rows, name) -> path: dicts JSON-encoded one per line, str as is, bytes raw."""

    def write(rows: list, name: str = "data.jsonl") -> str:
        with open(tmp_path / name, "wb") as f:
            for row in rows:
                if isinstance(row, bytes):
                    f.write(row + b"\n")
                elif isinstance(row, str):
                    f.write(row.encode() + b"\n")
                else:
                    f.write(json.dumps(row).encode() + b"\n")
        return str(tmp_path / name)

    return write


@pytest.fixture
def write_parquet(tmp_path: Path):
    """write_parquet(rows, name) -> path."""

    def write(rows: list[dict], name: str = "data.parquet") -> str:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
        return str(tmp_path / name)

    return write


@pytest.fixture
def make_args():
    """make_args(**overrides) -> slime-style args with the data flags' defaults."""

    def make(**overrides) -> types.SimpleNamespace:
        defaults = dict(
            prompt_data=None,
            input_key="input",
            label_key=None,
            metadata_key="metadata",
            tool_key="tools",
            apply_chat_template=False,
            apply_chat_template_kwargs={},
            rollout_shuffle=False,
            rollout_seed=42,
            rollout_max_prompt_len=None,
            n_samples_per_prompt=1,
            rollout_batch_size=2,
            hf_checkpoint=None,
            skip_invalid_data=False,
            buffer_filter_path=None,
            streaming_data=False,
        )
        return types.SimpleNamespace(**{**defaults, **overrides})

    return make


def numbered_rows(n: int) -> list[dict]:
    """n rows whose prompt and label carry their position: {"input": "prompt 0", "label": 0}, ..."""
    return [{"input": f"prompt {i}", "label": i} for i in range(n)]


@pytest.fixture
def rows_of():
    return numbered_rows


@pytest.fixture
def assert_message():
    """assert_message(error, *parts): the message is one line and contains every part."""

    def check(error: Exception, *parts: str) -> str:
        message = str(error)
        assert "\n" not in message, message
        for part in parts:
            assert part in message, f"{part!r} not in {message!r}"
        return message

    return check
