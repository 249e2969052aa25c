"""Errors for bad prompt data, and the tally of rows skipped by `--skip-invalid-data`.

Every message is one line that names the file, the line (JSONL, 1-based) or row (Parquet, 0-based as
in `@[start:end]`), the field, what was expected and what to do about it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

logger = logging.getLogger(__name__)

SKIP_HINT = "or pass --skip-invalid-data to skip (and count) such rows"


class DataError(ValueError):
    """A problem with prompt data or its configuration, stated so that a person can act on it.

    `where` is "PATH line N", "PATH row N", a path, or a flag; `field` is the row field at fault, if
    any; `reason` is a short category ("malformed_json", "missing_field", ...) used to count skipped
    rows; `skippable` is True only for problems confined to one row.
    """

    def __init__(
        self,
        where: str,
        problem: str,
        *,
        fix: str,
        field: str | None = None,
        reason: str = "invalid",
        skippable: bool = False,
    ) -> None:
        self.where = where
        self.field = field
        self.reason = reason
        self.skippable = skippable
        head = where if field is None else f"{where}, field {field!r}"
        super().__init__(one_line(f"{head}: {problem}; {fix}"))


def row_error(
    where: str, problem: str, *, reason: str, field: str | None = None, fix: str = "fix the row"
) -> DataError:
    """A skippable `DataError` for one bad row; the message ends with how to skip such rows."""
    return DataError(where, problem, fix=f"{fix}, {SKIP_HINT}", field=field, reason=reason, skippable=True)


def one_line(text: str) -> str:
    """`text` with every line break (and the whitespace around it) folded into one space."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def short_repr(value: Any, limit: int = 60) -> str:
    """repr of a bad value, cut to `limit` characters so that a message stays one readable line."""
    text = one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class SkippedRows:
    """Rows dropped by `--skip-invalid-data`: counted per reason, each logged at debug level."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: DataError | None = None

    def add(self, error: DataError) -> None:
        self.counts[error.reason] += 1
        self.first = self.first or error
        logger.debug("skipped invalid row: %s", error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """e.g. "3 invalid rows (malformed_json=1, empty_prompt=2); first: <message>"."""
        if not self.total:
            return "0 invalid rows"
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts.items()))
        return f"{self.total} invalid rows ({counts}); first: {self.first}"
