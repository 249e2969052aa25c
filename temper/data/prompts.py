"""From a dataset row to a prompt `Sample`: field lookup, validation, chat template, token counting.

A row's prompt (`--input-key`) is text or a chat message list. With `--apply-chat-template` it is
rendered by the tokenizer's own template (text is wrapped as one user message) into text; without it,
text stays text and messages stay messages. Tools (`--tool-key`) go to the template and to
`sample.metadata["tools"]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from temper.data.errors import DataError, row_error, short_repr, type_name
from temper.types import Sample

Row = dict[str, Any]


@dataclass(frozen=True)
class PromptFormat:
    """How rows are read: field names (slime's `--input-key`, ...) and chat-template use."""

    input_key: str = "input"
    label_key: str | None = None
    metadata_key: str | None = "metadata"
    tool_key: str | None = "tools"
    apply_chat_template: bool = False
    apply_chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: Any) -> PromptFormat:
        """Read the data flags from slime-style `args` (any object with attributes)."""
        return cls(
            input_key=getattr(args, "input_key", "input") or "input",
            label_key=getattr(args, "label_key", None),
            metadata_key=getattr(args, "metadata_key", "metadata"),
            tool_key=getattr(args, "tool_key", "tools"),
            apply_chat_template=bool(getattr(args, "apply_chat_template", False)),
            apply_chat_template_kwargs=dict(getattr(args, "apply_chat_template_kwargs", None) or {}),
        )


def load_tokenizer(hf_checkpoint: str | None, *, needed_by: str) -> Any:
    """The tokenizer of the Hugging Face folder `hf_checkpoint`; DataError naming `needed_by` if unset."""
    if not hf_checkpoint:
        raise DataError(
            needed_by,
            "needs a tokenizer, but --hf-checkpoint is not set",
            fix=f"set --hf-checkpoint to the model folder, or drop {needed_by}",
        )
    from transformers import AutoTokenizer  # imported here: transformers is slow to import

    try:
        return AutoTokenizer.from_pretrained(hf_checkpoint)
    except (OSError, ValueError) as e:
        raise DataError(
            hf_checkpoint,
            f"cannot load a tokenizer ({e})",
            fix="point --hf-checkpoint at a Hugging Face folder with tokenizer files",
        ) from e


class PromptBuilder:
    """Builds prompt Samples from rows and gives the text whose tokens count against the prompt limit."""

    def __init__(self, fmt: PromptFormat, tokenizer: Any = None) -> None:
        self.fmt = fmt
        self.tokenizer = tokenizer
        if fmt.apply_chat_template:
            self.require_chat_template("--apply-chat-template")

    def require_chat_template(self, needed_by: str) -> None:
        """Raise a DataError unless the tokenizer exists and has a chat template."""
        if self.tokenizer is None:
            raise DataError(
                needed_by, "needs a tokenizer, but none was given", fix="set --hf-checkpoint to the model folder"
            )
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                needed_by,
                f"needs a chat template, but the tokenizer {self.tokenizer.name_or_path!r} has none",
                fix="use a checkpoint whose tokenizer has a chat_template, or pre-render the prompts as text",
            )

    def build(self, row: Row, where: str) -> Sample:
        """The prompt Sample for `row` (found at `where`); raises a skippable DataError for a bad row."""
        prompt = self._prompt(row, where)
        tools = self._tools(row, where)
        metadata = self._metadata(row, where)
        if tools is not None:
            metadata["tools"] = tools
        if self.fmt.apply_chat_template:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            prompt = self.render(messages, tools, where)
        return Sample(prompt=prompt, label=self._label(row, where), metadata=metadata)

    def measured_text(self, sample: Sample, where: str) -> str:
        """The text whose token count is the prompt's length: the prompt, rendered if it is messages."""
        if isinstance(sample.prompt, str):
            return sample.prompt
        self.require_chat_template("--rollout-max-prompt-len on message-list prompts")
        return self.render(sample.prompt, sample.metadata.get("tools"), where)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, without added special tokens (as the engine will see it)."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def render(self, messages: list[Row], tools: list[Row] | None, where: str) -> str:
        """`messages` through the tokenizer's chat template, ending with the generation prompt."""
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=False,
                add_generation_prompt=True,
                **self.fmt.apply_chat_template_kwargs,
            )
        # Templates are user-supplied Jinja: any exception type can come out of them.
        except Exception as e:  # noqa: BLE001
            raise row_error(
                where,
                f"the chat template failed on this row ({type(e).__name__}: {e})",
                field=self.fmt.input_key,
                reason="chat_template",
                fix="check the messages' roles and content against the model's chat template",
            ) from e

    def _prompt(self, row: Row, where: str) -> str | list[Row]:
        key = self.fmt.input_key
        if key not in row:
            raise row_error(
                where,
                f"missing; keys present: {sorted(row)}",
                field=key,
                reason="missing_field",
                fix="set --input-key to the field that holds the prompt",
            )
        value = row[key]
        if isinstance(value, str):
            if not value.strip():
                raise row_error(where, "empty prompt; expected non-empty text", field=key, reason="empty_prompt")
            return value
        if isinstance(value, list):
            if not value:
                raise row_error(
                    where, "empty message list; expected at least one message", field=key, reason="empty_prompt"
                )
            for i, message in enumerate(value):
                _check_message(message, where, f"{key}[{i}]")
            return value
        raise row_error(
            where,
            f"got {type_name(value)} {short_repr(value)}; expected text or a list of {{role, content}} messages",
            field=key,
            reason="wrong_type",
        )

    def _label(self, row: Row, where: str) -> Any:
        key = self.fmt.label_key
        if key is None:
            return None
        if key not in row:
            raise row_error(
                where,
                f"missing label; keys present: {sorted(row)}",
                field=key,
                reason="missing_field",
                fix="set --label-key to the field that holds the answer (or leave it unset)",
            )
        return row[key]

    def _metadata(self, row: Row, where: str) -> dict[str, Any]:
        value = _decoded(row, self.fmt.metadata_key, where, "a JSON object (dict)")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise row_error(
                where,
                f"got {type_name(value)} {short_repr(value)}; expected a JSON object (dict)",
                field=self.fmt.metadata_key,
                reason="wrong_type",
            )
        return dict(value)

    def _tools(self, row: Row, where: str) -> list[Row] | None:
        value = _decoded(row, self.fmt.tool_key, where, "a list of tool schemas")
        if value is None:
            return None
        bad = not isinstance(value, list) or any(not isinstance(tool, dict) for tool in value)
        if bad:
            raise row_error(
                where,
                f"got {short_repr(value)}; expected a list of JSON-schema tool objects",
                field=self.fmt.tool_key,
                reason="wrong_type",
            )
        return value


def _decoded(row: Row, key: str | None, where: str, expected: str) -> Any:
    """row[key] (None when the key is unset or absent); a JSON string is decoded, as Parquet stores them."""
    if key is None or row.get(key) is None:
        return None
    value = row[key]
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise row_error(
            where, f"a string that is not JSON ({e.msg}); expected {expected}", field=key, reason="wrong_type"
        ) from e


def _check_message(message: Any, where: str, field_name: str) -> None:
    """A chat message is a dict with a string role and content that is text, parts, or null."""
    if not isinstance(message, dict):
        raise row_error(
            where,
            f"got {type_name(message)} {short_repr(message)}; expected a {{role, content}} message dict",
            field=field_name,
            reason="wrong_type",
        )
    if not isinstance(message.get("role"), str):
        raise row_error(
            where,
            f"message without a string 'role' (keys: {sorted(message)}); expected e.g. "
            '{"role": "user", "content": "..."}',
            field=field_name,
            reason="wrong_type",
        )
    if "content" not in message and "tool_calls" not in message:
        raise row_error(where, "message without 'content'", field=field_name, reason="missing_field")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise row_error(
            where,
            f"'content' is {type_name(content)} {short_repr(content)}; expected text or a list of parts",
            field=f"{field_name}.content",
            reason="wrong_type",
        )
