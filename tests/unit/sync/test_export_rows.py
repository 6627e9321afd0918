"""The CSV rows of each export format, from a member's identifiers."""

from __future__ import annotations

import hashlib

import pytest

from services.sync.export import (
    formatted_header,
    formatted_row,
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
