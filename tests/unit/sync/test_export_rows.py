"""The CSV rows of each export format, from a member's identifiers."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from services.sync.export import (
    FORMATTED,
    SINGLE_COLUMN,
    UNFORMATTED,
    ExportPiece,
    formatted_header,
    formatted_row,
    framed_csv,
    single_column_rows,
    unformatted_row,
)

pytestmark = pytest.mark.unit

IDS = [("email", "a@x.org"), ("email", "b@x.org"), ("user_id", "u1")]


def test_formatted_columns_are_indexed_per_id_type() -> None:
    widths = {"user_id": 1, "email": 3}
    assert formatted_header(widths) == ["id", "email", "email_1", "email_2", "user_id"]
    assert formatted_row(9, IDS, widths) == ["9", "a@x.org", "b@x.org", "", "u1"]


def test_unformatted_row_is_the_id_and_its_identifiers_as_json() -> None:
    assert unformatted_row(9, IDS[2:]) == ["9", '[{"type":"user_id","id":"u1"}]']


def test_single_column_hashes_each_value_unless_raw() -> None:
    assert single_column_rows(IDS, "email", raw=False) == [
        [hashlib.sha256(b"a@x.org").hexdigest()],
        [hashlib.sha256(b"b@x.org").hexdigest()],
    ]
    assert single_column_rows(IDS, "email", raw=True) == [["a@x.org"], ["b@x.org"]]
    assert single_column_rows(IDS, "device_id", raw=True) == []


async def _framed(fmt: str, chunks: list[bytes]) -> list[ExportPiece]:
    async def lines() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [p async for p in framed_csv(lines(), fmt, b"h\n")]


async def test_framing_counts_csv_lines_not_newlines_inside_quotes() -> None:
    chunk = b'1,"a\nb","x""\n""y"\n2,,\n'
    [piece] = await _framed(FORMATTED, [chunk])
    assert piece.csv == b"h\n" + chunk
    assert (piece.rows, piece.members_done) == (3, 2)  # with the header


async def test_framing_unescapes_copy_text_lines() -> None:
    [piece] = await _framed(UNFORMATTED, [b'1,"[{""id"":""a\\\\b\\nc""}]"\n'])
    assert piece.csv == b'h\n1,"[{""id"":""a\\b\nc""}]"\n'
    assert (piece.rows, piece.members_done) == (2, 1)


async def test_framing_splits_single_column_lines_and_drops_nulls() -> None:
    [piece] = await _framed(SINGLE_COLUMN, [b"aa\\nbb\n\\N\ncc\n"])
    assert piece.csv == b"h\naa\nbb\ncc\n"
    assert (piece.rows, piece.members_done) == (4, 3)
