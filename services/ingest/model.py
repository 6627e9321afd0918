"""Domain types of the ingest service: events as received, events as accepted, and
the per-event outcome. Plain Python: no grpc, protobuf, SQL or Redis here."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")

# JSON payloads arrive as bytes (gRPC: UTF-8 JSON) or already decoded (HTTP gateway).
JsonInput = bytes | dict[str, Any] | None


@dataclass(slots=True)
class RawEvent:
    """One event as a client sent it, before validation (transport-neutral)."""

    type: str
    message_id: str = ""
    user_id: str = ""
    anonymous_id: str = ""
    event: str = ""
    name: str = ""
    timestamp_us: int | None = None
    # Set by a transport that could not read the timestamp at all (e.g. bad ISO text).
    timestamp_error: str | None = None
    properties: JsonInput = None
    traits: JsonInput = None
    context: JsonInput = None
    group_id: str = ""
    previous_id: str = ""
    external_ids: Sequence[tuple[str, str]] = ()  # (type, value) pairs


@dataclass(slots=True)
class Identifier:
    """One identifier an event carries, with the request field it came from. Never
    changed once built (not declared frozen: a frozen dataclass sets each field through
    object.__setattr__, which made building one 3-4x dearer, ~1 us per event)."""

    type: str
    value: str
    field: str  # e.g. "user_id", "traits.email", "external_ids[0]"
    # (type, value), built once: resolution and the group's lookups read it ~10 times
    # per event (a property rebuilt the tuple each time: 5% of the writer's CPU).
    key: tuple[str, str] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.key = (self.type, self.value)


@dataclass(slots=True)
class Event:
    """An event that passed validation, normalised for storage."""

    index: int
    message_id: str
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    group_id: str | None
    previous_id: str | None
    timestamp_us: int
    properties: dict[str, Any] | None
    traits: dict[str, Any] | None
    context: dict[str, Any] | None
    identifiers: list[Identifier]
    # The same three payloads as JSON text (what the client sent when it sent bytes),
    # encoded once: the events COPY and the stream entry reuse it.
    properties_json: bytes | None
    traits_json: bytes | None
    context_json: bytes | None


class Status(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Violation:
    """Why an event was rejected: the request field and the rule it broke."""

    index: int
    field: str
    reason: str


@dataclass(slots=True)
class Outcome:
    """The result for one event of a request, in request order."""

    index: int
    message_id: str
    status: Status
    # A shared empty tuple by default: most outcomes have no violation, and a new empty
    # list per outcome cost its allocation for nothing.
    violations: Sequence[Violation] = ()
    profile_id: int | None = None
    seq: int | None = None


@dataclass(slots=True)
class BatchOutcome:
    """Results of one request: one Outcome per event, in order."""

    outcomes: list[Outcome]

    def count(self, status: Status) -> int:
        """How many events got `status`."""
        return sum(1 for outcome in self.outcomes if outcome.status is status)
