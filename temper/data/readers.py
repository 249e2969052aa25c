"""Rows of a prompt file: JSONL or Parquet, optionally cut by a `PATH@[start:end]` row slice.

A reader selects rows once, then hands them out by position `k` in the selection (0 .. len-1), either
all in file order (`iter_rows`) or one at a time (`read`, used by streaming datasets). Blank JSONL
lines are not rows: they are neither sliced nor reported, but line numbers still count them.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from temper.data.errors import DataError, row_error, type_name

Row = dict[str, Any]
_SPEC = re.compile(r"^(?P<path>.+)@\[(?P<start>[+-]?\d*):(?P<end>[+-]?\d*)\]$")
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_EXTENSIONS = ".jsonl or .parquet"


@dataclass(frozen=True)
class DataSpec:
    """A `--prompt-data` value split into the file path and the row slice (None: every row)."""

    path: str
    rows: slice | None = None

    def slice_text(self) -> str:
        if self.rows is None:
            return ""
        show = lambda v: "" if v is None else str(v)  # noqa: E731
        return f"@[{show(self.rows.start)}:{show(self.rows.stop)}]"


def parse_data_spec(spec: str) -> DataSpec:
    """Split "data.jsonl@[2:5]" into path and `slice(2, 5)`; python slice rules (negatives, open ends)."""
    match = _SPEC.match(spec)
    if match is None:
        return DataSpec(spec)
    bound = lambda s: int(s) if s not in ("", "+", "-") else None  # noqa: E731
    return DataSpec(match["path"], slice(bound(match["start"]), bound(match["end"])))


class Rows:
    """The selected rows of one file. Subclasses set `path`, `num_file_rows` and implement the rest."""

    path: str
    num_file_rows: int

    def __len__(self) -> int:
        raise NotImplementedError

    def location(self, k: int) -> str:
        """Where row `k` of the selection lives, for messages: "PATH line N" or "PATH row N"."""
        raise NotImplementedError

    def iter_rows(self) -> Iterator[tuple[int, Row | DataError]]:
        """(k, row) for every selected row in order; a row that cannot be parsed comes as its DataError."""
        raise NotImplementedError

    def read(self, k: int) -> Row:
        """Row `k` of the selection; raises DataError if it cannot be parsed."""
        raise NotImplementedError


class JsonlRows(Rows):
    """One JSON object per line. Keeps only the byte offset and line number of each selected row."""

    def __init__(self, path: str, rows: slice | None) -> None:
        self.path = path
        lines, offsets = _index_lines(path)
        self.num_file_rows = len(offsets)
        chosen = range(self.num_file_rows)[rows or slice(None)]
        self._lines = array("q", (lines[i] for i in chosen))
        self._offsets = array("q", (offsets[i] for i in chosen))

    def __len__(self) -> int:
        return len(self._offsets)

    def location(self, k: int) -> str:
        return f"{self.path} line {self._lines[k]}"

    def iter_rows(self) -> Iterator[tuple[int, Row | DataError]]:
        with open(self.path, "rb") as f:
            for k, offset in enumerate(self._offsets):
                f.seek(offset)
                yield k, self._parse(k, f.readline())

    def read(self, k: int) -> Row:
        with open(self.path, "rb") as f:
            f.seek(self._offsets[k])
            row = self._parse(k, f.readline())
        if isinstance(row, DataError):
            raise row
        return row

    def _parse(self, k: int, raw: bytes) -> Row | DataError:
        where = self.location(k)
        if self._offsets[k] == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = raw[e.start : e.start + 4]
            return row_error(
                where,
                f"bytes that are not UTF-8 at byte {e.start + 1} of the line ({bad!r}); expected UTF-8 text",
                reason="bad_encoding",
                fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            )
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            return row_error(
                where,
                f"malformed JSON at column {e.colno} ({e.msg.removesuffix(' at')}); expected one JSON object per line",
                reason="malformed_json",
                fix="fix the line",
            )
        if not isinstance(row, dict):
            return row_error(
                where, f"a JSON {type_name(row)}, expected a JSON object ({{...}}) per line", reason="not_an_object"
            )
        if _SURROGATE.search(text) and (field := _unencodable_field(row)) is not None:
            return row_error(
                where,
                "a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), which is no character; "
                "expected valid Unicode text",
                field=field,
                reason="bad_encoding",
                fix="write the character itself, or both halves of its surrogate pair",
            )
        return row


def _unencodable_field(row: Row) -> str | None:
    """The first top-level field of `row` holding a lone surrogate (text that no tokenizer can encode)."""
    for key, value in row.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return key
    return None


def _index_lines(path: str) -> tuple[array, array]:
    """1-based line numbers and byte offsets of the non-blank lines of `path`, read without decoding."""
    lines, offsets = array("q"), array("q")
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip() and raw.strip() != _BOM:
                lines.append(number)
                offsets.append(offset)
            offset += len(raw)
    return lines, offsets


class ParquetRows(Rows):
    """A Parquet table, memory-mapped by pyarrow; rows become Python dicts only when handed out."""

    def __init__(self, path: str, rows: slice | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            table = pq.read_table(path, memory_map=True)
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                path, f"cannot be read as Parquet ({e})", fix="check that it is a valid .parquet file"
            ) from e
        self.num_file_rows = table.num_rows
        self._positions = range(table.num_rows)[rows or slice(None)]
        self._table = table.slice(self._positions.start, len(self._positions)) if self._positions else table.slice(0, 0)

    def __len__(self) -> int:
        return len(self._positions)

    def location(self, k: int) -> str:
        return f"{self.path} row {self._positions[k]}"

    def iter_rows(self) -> Iterator[tuple[int, Row | DataError]]:
        k = 0
        for batch in self._table.to_batches(max_chunksize=1024):
            for row in batch.to_pylist():
                yield k, row
                k += 1

    def read(self, k: int) -> Row:
        return self._table.slice(k, 1).to_pylist()[0]


def open_rows(spec: str) -> Rows:
    """The rows `spec` ("PATH" or "PATH@[start:end]") selects; DataError if there are none or no file."""
    data = parse_data_spec(spec)
    _check_file(data.path, spec)
    ext = os.path.splitext(data.path)[1].lower()
    if ext == ".jsonl":
        rows: Rows = JsonlRows(data.path, data.rows)
    elif ext == ".parquet":
        rows = ParquetRows(data.path, data.rows)
    else:
        hint = "; a .json file with one object per line can simply be renamed .jsonl" if ext == ".json" else ""
        raise DataError(
            data.path,
            f"unknown file extension {ext or '(none)'!r}, expected {_EXTENSIONS}",
            fix=f"convert the data to JSONL (one JSON object per line) or Parquet{hint}",
        )
    _check_not_empty(rows, data)
    return rows


def _check_file(path: str, spec: str) -> None:
    if os.path.isdir(path):
        raise DataError(
            path, f"is a directory, expected a {_EXTENSIONS} file", fix=f"point --prompt-data at a file, not {spec!r}"
        )
    if not os.path.exists(path):
        raise DataError(
            path,
            "prompt file not found",
            fix=f"check --prompt-data {spec!r} (relative paths start from {os.getcwd()})",
        )


def _check_not_empty(rows: Rows, data: DataSpec) -> None:
    if rows.num_file_rows == 0:
        raise DataError(
            data.path, "the file has no rows", fix="fill it with prompts, or point --prompt-data at another file"
        )
    if len(rows) == 0:
        raise DataError(
            data.path,
            f"the row slice {data.slice_text()} selects none of the file's {rows.num_file_rows} rows",
            fix="choose start:end within the file (python slice rules; negatives count from the end)",
        )
