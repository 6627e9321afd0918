"""Which profiles a batch of stream entries touched, per workspace (pure).

An event entry (``kind`` event) names the canonical profile ingest resolved; a merge
entry (``kind`` merge) names the survivor and the absorbed profile, both of which must
be re-evaluated. Each touched profile keeps the trace fields of the last entry that
touched it, so the changes it causes continue that event's trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from services.shared.streams import TRACE_FIELDS, StreamEntry

_TRACE_KEYS = tuple(name.encode() for name in TRACE_FIELDS)


@dataclass
class Touched:
    """The profiles of one workspace a batch touched: profile id -> trace fields."""

    profiles: dict[int, dict[str, str]] = field(default_factory=dict)

    def add(self, profile_id: int, trace: dict[str, str]) -> None:
        """Record `profile_id` (a later entry's trace context wins)."""
        self.profiles[profile_id] = trace


def _int(fields: dict[bytes, bytes], name: bytes) -> int | None:
    value = fields.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def touched_profiles(entries: Iterable[StreamEntry]) -> dict[str, Touched]:
    """Workspace -> the profiles its entries touched. Entries of unknown kinds, or
    missing the fields their kind needs, touch nothing (they are still acknowledged:
    a malformed entry can never become valid by being redelivered)."""
    out: dict[str, Touched] = {}
    for entry in entries:
        f = entry.fields
        ws = f.get(b"workspace_id")
        if not ws:
            continue
        kind = f.get(b"kind", b"event")
        if kind == b"event":
            ids = [_int(f, b"profile_id")]
        elif kind == b"merge":
            ids = [_int(f, b"survivor_id"), _int(f, b"merged_id")]
        else:
            continue
        trace = {k.decode(): f[k].decode() for k in _TRACE_KEYS if k in f}
        touched = out.setdefault(ws.decode(), Touched())
        for pid in ids:
            if pid is not None:
                touched.add(pid, trace)
    return out
