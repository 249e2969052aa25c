"""Reading JSONL/Parquet rows, row slices, and the file-level and parse errors."""

from __future__ import annotations

import os

import pytest

from temper.data.errors import DataError
from temper.data.readers import DataSpec, open_rows, parse_data_spec


def rows_list(rows) -> list:
    return [row for _, row in rows.iter_rows()]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("d.jsonl", DataSpec("d.jsonl")),
        ("d.jsonl@[2:5]", DataSpec("d.jsonl", slice(2, 5))),
        ("d.jsonl@[-3:]", DataSpec("d.jsonl", slice(-3, None))),
        ("d.jsonl@[:4]", DataSpec("d.jsonl", slice(None, 4))),
        ("runs@2/d.parquet@[1:-1]", DataSpec("runs@2/d.parquet", slice(1, -1))),
        ("odd@[x:y].jsonl", DataSpec("odd@[x:y].jsonl")),
    ],
)
def test_parse_data_spec(spec, expected):
    assert parse_data_spec(spec) == expected


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize(
    "suffix, ids", [("", range(8)), ("@[2:5]", [2, 3, 4]), ("@[-3:]", [5, 6, 7]), ("@[:4]", range(4))]
)
def test_slices_select_rows(fmt, suffix, ids, write_jsonl, write_parquet, rows_of):
    path = write_jsonl(rows_of(8)) if fmt == "jsonl" else write_parquet(rows_of(8))
    rows = open_rows(path + suffix)
    assert [row["label"] for row in rows_list(rows)] == list(ids)
    assert len(rows) == len(list(ids))
    assert rows.read(len(rows) - 1)["label"] == list(ids)[-1]


def test_jsonl_locations_count_blank_lines(write_jsonl):
    path = write_jsonl([{"input": "a"}, "", "   ", {"input": "b"}])
    rows = open_rows(path)
    assert len(rows) == 2
    assert rows.location(1) == f"{path} line 4"


def test_parquet_location_is_file_row(write_parquet, rows_of):
    path = write_parquet(rows_of(6))
    rows = open_rows(path + "@[3:]")
    assert rows.location(0) == f"{path} row 3"


def test_jsonl_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"input": "a"}\n{"input": "b"}\n')
    assert [r["input"] for r in rows_list(open_rows(str(path)))] == ["a", "b"]


def test_malformed_json_names_file_and_line(write_jsonl, assert_message):
    path = write_jsonl([{"input": "ok"}, '{"input": "missing quote}'])
    error = rows_list(open_rows(path))[1]
    assert isinstance(error, DataError) and error.reason == "malformed_json" and error.skippable
    assert_message(error, "data.jsonl line 2", "malformed JSON", "column", "--skip-invalid-data")
    with pytest.raises(DataError, match="line 2"):
        open_rows(path).read(1)


def test_non_object_line(write_jsonl, assert_message):
    error = rows_list(open_rows(write_jsonl(['["a", "b"]'])))[0]
    assert error.reason == "not_an_object"
    assert_message(error, "line 1", "JSON list", "expected a JSON object")


def test_bad_encoding_names_line_and_byte(write_jsonl, assert_message):
    path = write_jsonl([{"input": "ok"}, b'{"input": "caf\xe9"}'])
    error = rows_list(open_rows(path))[1]
    assert error.reason == "bad_encoding"
    assert_message(error, "data.jsonl line 2", "not UTF-8", "byte 15", "UTF-8")


def test_file_not_found(tmp_path, assert_message):
    with pytest.raises(DataError) as info:
        open_rows(str(tmp_path / "nope.jsonl@[1:2]"))
    assert_message(info.value, "nope.jsonl", "not found", "--prompt-data")


@pytest.mark.parametrize("name, hint", [("d.csv", "'.csv'"), ("d.json", "renamed .jsonl")])
def test_unknown_extension(tmp_path, name, hint, assert_message):
    (tmp_path / name).write_text("{}\n")
    with pytest.raises(DataError) as info:
        open_rows(str(tmp_path / name))
    assert_message(info.value, name, "unknown file extension", ".jsonl or .parquet", hint)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        open_rows(str(tmp_path))


def test_empty_jsonl_file(tmp_path, assert_message):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DataError) as info:
        open_rows(str(tmp_path / "empty.jsonl"))
    assert_message(info.value, "empty.jsonl", "no rows")


def test_empty_parquet_file(write_parquet):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_parquet([{"input": "x"}])
    pq.write_table(pa.table({"input": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match="no rows"):
        open_rows(path)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_empty_slice(fmt, write_jsonl, write_parquet, rows_of, assert_message):
    path = write_jsonl(rows_of(5)) if fmt == "jsonl" else write_parquet(rows_of(5))
    with pytest.raises(DataError) as info:
        open_rows(path + "@[10:20]")
    assert_message(info.value, os.path.basename(path), "@[10:20]", "selects none", "5 rows")


def test_corrupt_parquet(tmp_path, assert_message):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as info:
        open_rows(str(tmp_path / "bad.parquet"))
    assert_message(info.value, "bad.parquet", "cannot be read as Parquet")
