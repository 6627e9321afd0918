"""The sync domain's records and the rules of its input (plain Python: no gRPC, no SQL)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.shared.errors import FieldViolation, InvalidArgument, too_long

WEBHOOK = "webhook"
FILE = "file"
BRAZE = "braze"
AMPLITUDE = "amplitude"
KINDS = (WEBHOOK, FILE, BRAZE, AMPLITUDE)
SECRET_NEEDED = {
    WEBHOOK: "webhooks need a secret to sign batches",
    BRAZE: "the Braze REST API key is required",
    AMPLITUDE: "the Amplitude secret key is required (the API key goes in options)",
}
FILE_FORMATS = ("csv", "jsonl")

AUDIENCE = "audience"
COMPUTED_TRAIT = "computed_trait"
PREDICTION = "prediction"
RECOMMENDATION = "recommendation"
EVENTS = "events"  # raw events forwarded as they arrive (event streaming)
# Sources whose syncs send each profile's current value (not enter/exit changes).
# (A recommendation sync's value is the profile's top-N item ids of the object.)
VALUE_SOURCES = (COMPUTED_TRAIT, PREDICTION, RECOMMENDATION)
SOURCES = (AUDIENCE, *VALUE_SOURCES, EVENTS)
EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
MAX_EVENT_FILTERS = 100
MAX_ACTIVE_WITHIN_DAYS = 3650
ONE_TIME = "one_time"
HOURLY = "hourly"
DAILY = "daily"
REALTIME = "realtime"
CADENCES = (ONE_TIME, HOURLY, DAILY, REALTIME)
PERIOD_US = {HOURLY: 3_600_000_000, DAILY: 86_400_000_000}

ADDED = "added"
REMOVED = "removed"
SET = "set"  # a computed trait's or prediction's new value

# Run statuses (SyncRun.status).
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
DEAD_LETTERED = "dead_lettered"
PAUSED = "paused"

DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 10_000
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 300.0
DEFAULT_MAX_REMOVAL_FRACTION = 0.5
ID_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


_last_id_us = 0


def new_id(prefix: str) -> str:
    """An id that sorts by creation (wall-clock microseconds, strictly increasing within
    a process, then random bits), so listing by id lists oldest first and keyset paging
    is stable."""
    global _last_id_us
    _last_id_us = max(_last_id_us + 1, time.time_ns() // 1000)
    return f"{prefix}_{_last_id_us:014x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class DestinationInput:
    """What a caller asks for when creating or updating a destination."""

    name: str
    kind: str
    base_url: str = ""
    directory: str = ""
    file_format: str = ""
    secret: str = ""  # empty on update: keep the stored one
    rate_limit_per_second: float = 0.0
    batch_size: int = 0  # 0: the default
    timeout_seconds: float = 0.0  # 0: the default
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Destination:
    """A stored destination. `secret` is the decrypted secret (never sent to clients)."""

    id: str
    workspace_id: str
    name: str
    kind: str
    base_url: str
    directory: str
    file_format: str
    secret: str | None
    rate_limit_per_second: float
    batch_size: int
    timeout_seconds: float
    created_at_us: int
    options: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # the secret never reaches a log line through repr
        return f"Destination(id={self.id!r}, kind={self.kind!r}, name={self.name!r})"


@dataclass(frozen=True)
class SyncInput:
    """What a caller asks for when creating or updating a sync."""

    destination_id: str
    source: str
    source_key: str
    id_type: str
    cadence: str
    max_removal_fraction: float  # 0: the default
    paused: bool = False
    active_within_days: int = 0  # 0: every profile
    # Audience syncs: leave out the audience's holdout (control) members.
    exclude_holdout: bool = False
    # Event syncs: the event types and names forwarded (empty: every one).
    event_types: tuple[str, ...] = ()
    event_names: tuple[str, ...] = ()
    # Recommendation syncs: each item with its metadata, not its id alone.
    item_metadata: bool = False


@dataclass(frozen=True)
class Sync:
    """A stored sync."""

    id: str
    workspace_id: str
    destination_id: str
    source: str
    source_key: str
    id_type: str
    cadence: str
    cursor: int
    backfilled: bool
    delivered_members: int
    paused: bool
    paused_reason: str
    max_removal_fraction: float
    removal_approved: bool
    next_run_at_us: int | None
    created_at_us: int
    destination_state: Mapping[str, Any] | None = None
    active_within_days: int = 0
    # Value syncs: the profile id of the last value acknowledged (with `cursor`, its
    # computed-at instant, the keyset position in the source's values).
    cursor_profile_id: int = 0
    event_types: tuple[str, ...] = ()
    event_names: tuple[str, ...] = ()
    # Audience syncs: the audience's holdout (control) members are never sent.
    exclude_holdout: bool = False
    # Recommendation syncs: each item with its metadata, not its id alone.
    item_metadata: bool = False


@dataclass(frozen=True)
class DeadLetter:
    """A batch a destination refused, with its response."""

    id: str
    idempotency_key: str
    first_seq: int
    last_seq: int
    status_code: int
    response_body: str
    changes: int
    created_at_us: int
    redriven_at_us: int | None = None


@dataclass
class Run:
    """A run's record; counts grow while it delivers."""

    id: str
    workspace_id: str
    sync_id: str
    from_cursor: int
    started_at_us: int
    status: str = RUNNING
    to_cursor: int = 0
    added: int = 0
    removed: int = 0
    skipped: int = 0
    failed: int = 0
    batches: int = 0
    retries: int = 0
    error: str = ""
    finished_at_us: int | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Who holds the sync's claim during the run (not stored with the run).
    holder: str = ""


@dataclass(frozen=True)
class Change:
    """One membership change to deliver: `id` is the value of the sync's id type."""

    seq: int  # value syncs: the value's computed-at microseconds
    action: str  # added | removed | set
    profile_id: int
    id: str
    at_us: int
    value: Any = None  # the new value of a `set`

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        """The change `as_json` wrote (a dead letter's payload)."""
        return cls(
            int(data["seq"]),
            data["action"],
            int(data["profile_id"]),
            data["id"],
            data["at_us"],
            data.get("value"),
        )

    def as_json(self) -> dict[str, Any]:
        """The change as the JSON object webhooks and JSON Lines files carry."""
        out = {
            "seq": self.seq,
            "action": self.action,
            "profile_id": str(self.profile_id),
            "id": self.id,
            "at_us": self.at_us,
        }
        if self.action == SET:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class ForwardedEvent:
    """One raw event an event sync forwards: `id` is the value of the sync's id type."""

    seq: int
    message_id: str
    type: str
    name: str | None
    profile_id: int
    id: str
    timestamp_us: int
    properties: Any = None
    traits: Any = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForwardedEvent:
        """The event `as_json` wrote (a dead letter's payload)."""
        return cls(
            int(data["seq"]),
            data["message_id"],
            data["type"],
            data.get("name"),
            int(data["profile_id"]),
            data["id"],
            int(data["timestamp_us"]),
            data.get("properties"),
            data.get("traits"),
        )

    def as_json(self) -> dict[str, Any]:
        """The event as webhooks and files carry it."""
        return {
            "seq": self.seq,
            "message_id": self.message_id,
            "type": self.type,
            "name": self.name,
            "profile_id": str(self.profile_id),
            "id": self.id,
            "timestamp_us": self.timestamp_us,
            "properties": self.properties,
            "traits": self.traits,
        }


def _url_violation(name: str, url: str) -> FieldViolation | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return FieldViolation(name, "must be an absolute http:// or https:// URL")
    return too_long(name, url, 2048)


def check_destination(given: DestinationInput, creating: bool) -> None:
    """Raise InvalidArgument naming every bad field of a destination."""
    problems: list[FieldViolation | None] = []
    if not given.name.strip():
        problems.append(FieldViolation("destination.name", "is required"))
    problems.append(too_long("destination.name", given.name, 255))
    if given.kind not in KINDS:
        problems.append(FieldViolation("destination.kind", f"must be one of {', '.join(KINDS)}"))
    # Amplitude's base URL is optional: its region names the host.
    if given.kind in (WEBHOOK, BRAZE) or (given.kind == AMPLITUDE and given.base_url):
        problems.append(_url_violation("destination.base_url", given.base_url))
    if creating and given.kind in SECRET_NEEDED and not given.secret:
        problems.append(FieldViolation("destination.secret", SECRET_NEEDED[given.kind]))
    for key, value in given.options.items():
        problems.append(too_long(f"destination.options[{key}]", value, 255))
    if given.kind == FILE:
        if not given.directory.startswith("/"):
            problems.append(FieldViolation("destination.directory", "must be an absolute path"))
        problems.append(too_long("destination.directory", given.directory, 1024))
        if given.file_format not in FILE_FORMATS:
            problems.append(FieldViolation("destination.file_format", "must be csv or jsonl"))
    if given.secret:
        problems.append(too_long("destination.secret", given.secret, 4096))
    if not 0 <= given.rate_limit_per_second <= 100_000:
        problems.append(
            FieldViolation("destination.rate_limit_per_second", "must be between 0 and 100000")
        )
    if not 0 <= given.batch_size <= MAX_BATCH_SIZE:
        problems.append(
            FieldViolation("destination.batch_size", f"must be between 1 and {MAX_BATCH_SIZE}")
        )
    if not 0 <= given.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        problems.append(
            FieldViolation(
                "destination.timeout_seconds", f"must be between 0 and {MAX_TIMEOUT_SECONDS:g}"
            )
        )
    _raise(problems, "invalid destination")


def check_sync(given: SyncInput) -> None:
    """Raise InvalidArgument naming every bad field of a sync."""
    problems: list[FieldViolation | None] = []
    if not given.destination_id:
        problems.append(FieldViolation("sync.destination_id", "is required"))
    if given.source not in SOURCES:
        problems.append(
            FieldViolation(
                "sync.source",
                "must be an audience, a computed trait, a prediction, a recommendation "
                "object or events",
            )
        )
    if not given.source_key and given.source != EVENTS:
        problems.append(
            FieldViolation(
                "sync.source_key",
                "is required (the audience, trait, prediction or recommendation object key)",
            )
        )
    problems.append(too_long("sync.source_key", given.source_key, 255))
    if not ID_TYPE.match(given.id_type):
        problems.append(
            FieldViolation(
                "sync.id_type",
                "is required: an identifier type such as user_id, email or anonymous_id",
            )
        )
    if given.cadence not in CADENCES:
        problems.append(
            FieldViolation("sync.cadence", "must be one_time, hourly, daily or realtime")
        )
    elif given.cadence == REALTIME and given.source in VALUE_SOURCES:
        problems.append(
            FieldViolation(
                "sync.cadence",
                "realtime syncs are of audiences; computed traits, predictions and "
                "recommendations sync one_time, hourly or daily",
            )
        )
    if given.source == EVENTS and given.cadence != REALTIME:
        problems.append(
            FieldViolation("sync.cadence", "event syncs forward events as they come: realtime")
        )
    if given.exclude_holdout and given.source != AUDIENCE:
        problems.append(FieldViolation("sync.exclude_holdout", "only for audience syncs"))
    if given.item_metadata and given.source != RECOMMENDATION:
        problems.append(FieldViolation("sync.item_metadata", "only for recommendation syncs"))
    if given.source != EVENTS and (given.event_types or given.event_names):
        problems.append(FieldViolation("sync.event_types", "only event syncs filter events"))
    for t in given.event_types:
        if t not in EVENT_TYPES:
            problems.append(
                FieldViolation("sync.event_types", f"must be among {', '.join(EVENT_TYPES)}")
            )
            break
    if len(given.event_names) > MAX_EVENT_FILTERS:
        problems.append(FieldViolation("sync.event_names", f"at most {MAX_EVENT_FILTERS}"))
    for n in given.event_names:
        if not n or len(n) > 255:
            problems.append(FieldViolation("sync.event_names", "each 1 to 255 characters"))
            break
    if given.active_within_days and given.source == EVENTS:
        problems.append(
            FieldViolation("sync.active_within_days", "event syncs forward every event")
        )
    elif not 0 <= given.active_within_days <= MAX_ACTIVE_WITHIN_DAYS:
        problems.append(
            FieldViolation(
                "sync.active_within_days", f"must be between 0 and {MAX_ACTIVE_WITHIN_DAYS}"
            )
        )
    if not 0 <= given.max_removal_fraction <= 1:
        problems.append(FieldViolation("sync.max_removal_fraction", "must be between 0 and 1"))
    _raise(problems, "invalid sync")


def _raise(problems: Sequence[FieldViolation | None], what: str) -> None:
    found = [p for p in problems if p is not None]
    if found:
        raise InvalidArgument(
            f"{what}: " + "; ".join(f"{p.field} {p.description}" for p in found), found
        )
