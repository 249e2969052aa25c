"""DataError formatting and the skipped-row tally."""

from __future__ import annotations

import logging

from temper.data.errors import DataError, SkippedRows, one_line, row_error, short_repr


def test_data_error_is_one_line_with_field_and_fix():
    error = DataError("d.jsonl line 3", "bad\nthing\r\n  here", fix="do this", field="input", reason="x")
    assert str(error) == "d.jsonl line 3, field 'input': bad thing here; do this"
    assert isinstance(error, ValueError) and not error.skippable


def test_row_error_is_skippable_and_says_how_to_skip():
    error = row_error("d.jsonl line 1", "empty prompt", reason="empty_prompt", field="input")
    assert error.skippable and error.reason == "empty_prompt"
    assert str(error).endswith("fix the row, or pass --skip-invalid-data to skip (and count) such rows")


def test_short_repr_cuts_long_values():
    assert short_repr("x" * 100, limit=10) == "'xxxxxx..."
    assert short_repr([1, 2]) == "[1, 2]"
    assert one_line(" a \n b ") == "a b"


def test_skipped_rows_counts_and_summarizes(caplog):
    skipped = SkippedRows()
    assert skipped.summary() == "0 invalid rows"
    with caplog.at_level(logging.DEBUG, logger="temper.data"):
        for reason in ("b", "a", "b"):
            skipped.add(row_error(f"f line {reason}", "bad", reason=reason))
    assert skipped.total == 3 and skipped.counts == {"a": 1, "b": 2}
    assert skipped.summary().startswith("3 invalid rows (a=1, b=2); first: f line b: bad")
    assert len(caplog.records) == 3
