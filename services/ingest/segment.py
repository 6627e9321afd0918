"""The Segment Tracking API's JSON shape as transport-neutral RawEvents (HTTP gateway).

Field names: type, userId, anonymousId, messageId, timestamp, event, name, properties,
traits, context, groupId, previousId, sentAt. Clients send numbers as ids sometimes and
explicit nulls for absent ids; both are accepted.
"""

from __future__ import annotations

from typing import Any

from services.ingest.model import RawEvent
from services.shared.clock import parse_iso_us


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | str):
        return str(value)
    return ""


def _timestamp(value: Any) -> tuple[int | None, str | None]:
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        return None, "not an ISO-8601 timestamp"
    try:
        return parse_iso_us(value), None
    except ValueError:
        return None, "not an ISO-8601 timestamp"


def from_segment(
    payload: Any, event_type: str | None = None, batch_context: Any = None
) -> RawEvent:
    """One Segment message as a RawEvent; `event_type` is set by single-type endpoints."""
    if not isinstance(payload, dict):
        return RawEvent(type="", timestamp_error=None, properties=b"[]")
    timestamp_us, timestamp_error = _timestamp(payload.get("timestamp"))
    context = payload.get("context")
    if context is None:
        context = batch_context
    external = payload.get("externalIds")
    return RawEvent(
        type=event_type or _text(payload.get("type")),
        message_id=_text(payload.get("messageId")),
        user_id=_text(payload.get("userId")),
        anonymous_id=_text(payload.get("anonymousId")),
        event=_text(payload.get("event")),
        name=_text(payload.get("name")),
        timestamp_us=timestamp_us,
        timestamp_error=timestamp_error,
        properties=payload.get("properties"),
        traits=payload.get("traits"),
        context=context,
        group_id=_text(payload.get("groupId")),
        previous_id=_text(payload.get("previousId")),
        external_ids=[
            (_text(item.get("type")), _text(item.get("id")))
            for item in (external if isinstance(external, list) else [])
            if isinstance(item, dict)
        ],
    )
