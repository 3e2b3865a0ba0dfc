"""Reading a CSV file as a person or a spreadsheet writes it.

A spreadsheet's "CSV UTF-8" starts with a byte-order mark and ends its lines with CRLF;
a hand-written file has neither. `csv_rows` reads both the same: the mark is dropped
(encoding "utf-8-sig"), and the csv module sees every line ending itself (newline="", as
the csv module's documentation asks), so quoted fields may hold commas, spaces and even
line breaks.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vggfeat.utils.errors import InputError


class TableEncodingError(InputError):
    """A CSV file that is not UTF-8 text; the message names the file and the fix."""


@contextmanager
def csv_rows(path) -> Iterator[csv.DictReader]:
    """A `csv.DictReader` over `path` (header row first), byte-order mark or not, any line
    ending. Bytes that are not UTF-8 raise `TableEncodingError` naming the file."""
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as handle:
            yield csv.DictReader(handle)
    except UnicodeDecodeError as error:
        raise TableEncodingError(
            f"{path}: not UTF-8 text (byte {error.object[error.start:error.start + 1]!r} at "
            f"offset {error.start}); save it as \"CSV UTF-8\" (or UTF-8 text)") from None
