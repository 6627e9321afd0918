"""Segment-shaped JSON lines as ingest events, and their batching."""

from __future__ import annotations

import json

import pytest
from audiences.v1 import ingest_pb2

from audiences_cli.events import Batcher, EventLineError, content_message_id, read_jsonl, to_event

pytestmark = pytest.mark.unit


def test_a_segment_track_call_becomes_an_event() -> None:
    event = to_event(
        {
            "type": "track",
            "userId": 42,
            "anonymousId": None,
            "event": "Order Completed",
            "properties": {"revenue": 12.5},
            "context": {"ip": "10.0.0.1"},
            "timestamp": "2025-03-01T10:00:00.250+01:00",
            "messageId": "m-1",
            "externalIds": [{"type": "email", "id": "a@b.c"}],
        }
    )
    assert (event.type, event.user_id, event.anonymous_id) == (
        ingest_pb2.EVENT_TYPE_TRACK,
        "42",
        "",
    )
    assert event.message_id == "m-1" and event.event == "Order Completed"
    assert json.loads(event.properties) == {"revenue": 12.5}
    assert json.loads(event.context) == {"ip": "10.0.0.1"}
    assert event.timestamp.ToJsonString() == "2025-03-01T09:00:00.250Z"
    assert [(i.type, i.value) for i in event.external_ids] == [("email", "a@b.c")]


def test_a_line_without_a_message_id_gets_one_from_its_content() -> None:
    line = {"type": "identify", "userId": "ada", "traits": {"plan": "pro"}}
    first, again = to_event(line), to_event(dict(reversed(list(line.items()))))
    assert first.message_id == again.message_id == content_message_id(line)
    assert to_event({**line, "traits": {"plan": "free"}}).message_id != first.message_id


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"type": "purchase"}', "type 'purchase' is not one of"),
        ('{"type": "track", "timestamp": "yesterday"}', "timestamp 'yesterday' is not ISO-8601"),
        ("{not json", "not JSON"),
    ],
)
def test_a_bad_line_is_named_by_file_and_number(line: str, message: str) -> None:
    with pytest.raises(EventLineError, match=message) as raised:
        list(read_jsonl(['{"type": "page", "anonymousId": "a"}', "", line], "events.jsonl"))
    assert str(raised.value).startswith("events.jsonl:3:")


def test_batches_respect_count_and_size() -> None:
    events = [ingest_pb2.Event(message_id=f"m{i}", properties=b"x" * 100) for i in range(7)]
    assert [len(b) for b in Batcher(max_events=3).batches(events)] == [3, 3, 1]
    size = events[0].ByteSize()
    assert [len(b) for b in Batcher(max_bytes=2 * size).batches(events)] == [2, 2, 2, 1]
    assert list(Batcher().batches([])) == []
