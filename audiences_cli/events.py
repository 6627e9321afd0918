"""Segment-shaped JSON events (one per line of a .jsonl file) as ingest Batch events.

Field names follow the Segment Tracking API: type, userId, anonymousId, messageId,
timestamp, event, name, properties, traits, context, groupId, previousId, sentAt,
externalIds ([{type, id}]). A line without a messageId gets one derived from its
content, so sending the same file twice stores each event once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from audiences.v1 import common_pb2, ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

TYPES = {
    "track": ingest_pb2.EVENT_TYPE_TRACK,
    "identify": ingest_pb2.EVENT_TYPE_IDENTIFY,
    "page": ingest_pb2.EVENT_TYPE_PAGE,
    "screen": ingest_pb2.EVENT_TYPE_SCREEN,
    "group": ingest_pb2.EVENT_TYPE_GROUP,
    "alias": ingest_pb2.EVENT_TYPE_ALIAS,
}
# The ingest Batch limits (1,000 events or 4 MiB): stay well inside both.
BATCH_EVENTS = 500
BATCH_BYTES = 3 * 1024 * 1024
_NAMESPACE = uuid.UUID("6f1d3a52-8a52-4a43-9d0b-6c1b0d6f0e11")


class EventLineError(ValueError):
    """A line that is not a JSON object with a known type (line number and why)."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float | str) else ""


def _json_bytes(value: Any) -> bytes:
    return b"" if value is None else json.dumps(value, separators=(",", ":")).encode()


def parse_iso_us(text: str) -> int:
    """Epoch microseconds of an ISO-8601 instant (`Z` or an offset; none means UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // _MICROSECOND


_MICROSECOND = datetime.resolution


def timestamp_of(micros: int) -> Timestamp:
    """A protobuf Timestamp for epoch microseconds."""
    stamp = Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


def content_message_id(payload: dict[str, Any]) -> str:
    """A message id that is the same for the same event content (idempotent re-sends)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return str(uuid.uuid5(_NAMESPACE, hashlib.sha256(canonical.encode()).hexdigest()))


def to_event(payload: Any, where: str = "event") -> ingest_pb2.Event:
    """One Segment JSON message as an ingest Event; EventLineError when it cannot be one.
    Field-level checks (ids, sizes, timestamp range) are the server's, reported per event."""
    if not isinstance(payload, dict):
        raise EventLineError(f"{where}: not a JSON object")
    kind = _text(payload.get("type")).lower()
    if kind not in TYPES:
        raise EventLineError(f"{where}: type {kind!r} is not one of {', '.join(TYPES)}")
    event = ingest_pb2.Event(
        message_id=_text(payload.get("messageId")) or content_message_id(payload),
        type=TYPES[kind],
        user_id=_text(payload.get("userId")),
        anonymous_id=_text(payload.get("anonymousId")),
        event=_text(payload.get("event")),
        name=_text(payload.get("name")),
        properties=_json_bytes(payload.get("properties")),
        traits=_json_bytes(payload.get("traits")),
        context=_json_bytes(payload.get("context")),
        group_id=_text(payload.get("groupId")),
        previous_id=_text(payload.get("previousId")),
        external_ids=[
            common_pb2.Identifier(type=_text(item.get("type")), value=_text(item.get("id")))
            for item in payload.get("externalIds") or []
            if isinstance(item, dict)
        ],
    )
    for field in ("timestamp", "sentAt"):
        value = payload.get(field)
        if value:
            try:
                micros = parse_iso_us(str(value))
            except ValueError as error:
                raise EventLineError(f"{where}: {field} {value!r} is not ISO-8601") from error
            target = event.timestamp if field == "timestamp" else event.sent_at
            target.CopyFrom(timestamp_of(micros))
    return event


def read_jsonl(lines: Iterable[str], source: str) -> Iterator[ingest_pb2.Event]:
    """Events of a JSON-lines text (blank lines skipped); EventLineError names the line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            payload = json.loads(line)
        except ValueError as error:
            raise EventLineError(f"{where}: not JSON ({error})") from error
        yield to_event(payload, where)


@dataclass
class Batcher:
    """Groups events into Batch-sized lists by count and encoded size."""

    max_events: int = BATCH_EVENTS
    max_bytes: int = BATCH_BYTES

    def batches(self, events: Iterable[ingest_pb2.Event]) -> Iterator[list[ingest_pb2.Event]]:
        current: list[ingest_pb2.Event] = []
        size = 0
        for event in events:
            encoded = event.ByteSize()
            if current and (len(current) >= self.max_events or size + encoded > self.max_bytes):
                yield current
                current, size = [], 0
            current.append(event)
            size += encoded
        if current:
            yield current
