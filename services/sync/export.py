"""CSV export of an audience's members in the three formats of design.md section 9.

- unformatted: ``id,external_ids``: the profile id and a JSON array of its identifiers
  (``[{"type": "email", "id": "..."}]``).
- formatted: ``id`` and one column per id type, repeated with indexed headers when a
  member has several values (``email,email_1,...``): as many as the member with the
  most values of that type needs.
- single column: one id type, one row per value, each the hex SHA-256 of the value
  unless raw values are asked for.

Rows are produced from a stream of members and written in chunks of about
`CHUNK_BYTES`, so memory does not grow with the audience.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import orjson

UNFORMATTED = "unformatted"
FORMATTED = "formatted"
SINGLE_COLUMN = "single_column"
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExportPiece:
    """One chunk of CSV and the progress after it."""

    csv: bytes
    rows: int
    members_done: int


def formatted_header(widths: Mapping[str, int]) -> list[str]:
    """``id`` then, per id type in name order, ``type, type_1, ... type_{n-1}``."""
    header = ["id"]
    for id_type in sorted(widths):
        header.extend(id_type if i == 0 else f"{id_type}_{i}" for i in range(widths[id_type]))
    return header


def formatted_row(
    person: int, identifiers: Sequence[tuple[str, str]], widths: Mapping[str, int]
) -> list[str]:
    """The member's row under `formatted_header(widths)` (empty cells where it has fewer)."""
    row = [str(person)]
    for id_type in sorted(widths):
        values = [v for t, v in identifiers if t == id_type]
        row.extend(values[i] if i < len(values) else "" for i in range(widths[id_type]))
    return row


def unformatted_row(person: int, identifiers: Sequence[tuple[str, str]]) -> list[str]:
    """``[id, JSON array of {"type", "id"}]``."""
    ids = [{"type": t, "id": v} for t, v in identifiers]
    return [str(person), orjson.dumps(ids).decode()]


def single_column_rows(
    identifiers: Sequence[tuple[str, str]], id_type: str, raw: bool
) -> list[list[str]]:
    """One row per value of `id_type`: hex SHA-256 of the UTF-8 value unless `raw`."""
    return [
        [v if raw else hashlib.sha256(v.encode()).hexdigest()]
        for t, v in identifiers
        if t == id_type
    ]


async def export_csv(
    members: AsyncIterator[tuple[int, list[tuple[str, str]]]],
    fmt: str,
    widths: Mapping[str, int],
    id_type: str = "",
    raw: bool = False,
) -> AsyncIterator[ExportPiece]:
    """CSV chunks of the members in `fmt`; the first chunk starts with the header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == UNFORMATTED:
        writer.writerow(["id", "external_ids"])
    elif fmt == FORMATTED:
        writer.writerow(formatted_header(widths))
    else:
        writer.writerow([id_type if raw else f"{id_type}_sha256"])
    rows = 1
    done = 0
    async for person, identifiers in members:
        done += 1
        if fmt == UNFORMATTED:
            writer.writerow(unformatted_row(person, identifiers))
            rows += 1
        elif fmt == FORMATTED:
            writer.writerow(formatted_row(person, identifiers, widths))
            rows += 1
        else:
            found = single_column_rows(identifiers, id_type, raw)
            writer.writerows(found)
            rows += len(found)
        if buffer.tell() >= CHUNK_BYTES:
            yield ExportPiece(buffer.getvalue().encode(), rows, done)
            buffer.seek(0)
            buffer.truncate()
            rows = 0
    yield ExportPiece(buffer.getvalue().encode(), rows, done)
