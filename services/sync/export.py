"""CSV export of an audience's members in the three formats of design.md section 9.

- unformatted: ``id,external_ids``: the profile id and a JSON array of its identifiers
  (``[{"type": "email", "id": "..."}]``).
- formatted: ``id`` and one column per id type, repeated with indexed headers when a
  member has several values (``email,email_1,...``): as many as the member with the
  most values of that type needs.
- single column: one id type, one row per value, each the hex SHA-256 of the value
  unless raw values are asked for.

On Postgres the lines come formatted from the database (`framed_csv` over
``COPY ... TO STDOUT``, readmodel.export_query); elsewhere, and for raw single-column
exports, they are formatted here from a stream of members (`export_csv`). Either way
they go out in chunks of about `CHUNK_BYTES`, so memory does not grow with the
audience.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
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


# COPY's text format escapes these in a value; every other byte is itself.
_ESCAPED = re.compile(rb"\\(.)", re.S)
_UNESCAPE = {
    b"\\": b"\\",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"b": b"\b",
    b"f": b"\f",
    b"v": b"\v",
}


def _unescape(data: bytes) -> bytes:
    return _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), data)


def _csv_lines(data: bytes) -> int:
    """How many CSV lines `data` (whole lines) holds: newlines outside quoted values.
    A doubled quote inside a value flips the parity twice, so parity says where."""
    lines, quoted = 0, False
    for piece in data.split(b"\n")[:-1]:
        quoted ^= piece.count(b'"') % 2 == 1
        if not quoted:
            lines += 1
    return lines


def header_line(fmt: str, widths: Mapping[str, int], id_type: str, raw: bool) -> bytes:
    """The CSV header of an export in `fmt`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == UNFORMATTED:
        writer.writerow(["id", "external_ids"])
    elif fmt == FORMATTED:
        writer.writerow(formatted_header(widths))
    else:
        writer.writerow([id_type if raw else f"{id_type}_sha256"])
    return buffer.getvalue().encode()


async def framed_csv(
    lines: AsyncIterator[bytes], fmt: str, header: bytes
) -> AsyncIterator[ExportPiece]:
    """CSV chunks from the COPY of `readmodel.export_query` (whole lines per piece of
    input). Formatted: CSV already, one line per member, a newline inside a quoted
    value not ending one. Otherwise COPY's text format: each real newline ends one
    member's line, escaped ones are newlines inside a value or, in a single-column
    export, between a member's rows (a member without a value is a NULL line,
    dropped)."""
    parts = [header]
    size, rows, done = len(header), 1, 0
    async for data in lines:
        members = data.count(b"\n")
        done += members
        if fmt == SINGLE_COLUMN:
            # Hex digests: no escapes but the row separators and NULL lines.
            data = data.replace(b"\\N\n", b"").replace(b"\\n", b"\n")
            rows += data.count(b"\n")
        elif fmt == FORMATTED:
            if b'"' in data:
                members = _csv_lines(data)
                done += members - data.count(b"\n")
            rows += members
        else:
            if b"\\" in data:
                data = _unescape(data)
            rows += members
        parts.append(data)
        size += len(data)
        if size >= CHUNK_BYTES:
            yield ExportPiece(b"".join(parts), rows, done)
            parts, size, rows = [], 0, 0
    yield ExportPiece(b"".join(parts), rows, done)
