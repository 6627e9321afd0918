"""The one small interface every destination type implements.

A run opens a `DestinationRun` on its destination, hands it batches of changes in
seq order, and calls `finish` once every batch was handed over (or `abort` when the
run fails). A type whose destination acknowledges each batch (an HTTP API) says so
with `acknowledges_each_batch`, and the run advances the sync's cursor after every
batch; otherwise (a file, published atomically at the end) the cursor advances only
after `finish`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from services.shared.errors import FieldViolation
from services.sync.delivery import HttpAnswer, RetryPolicy, TokenBucket, post
from services.sync.model import AUDIENCE, EVENTS, Change, Destination, ForwardedEvent


@dataclass(frozen=True)
class Batch:
    """Changes delivered together under one idempotency key."""

    sync_id: str
    audience_key: str
    id_type: str
    idempotency_key: str
    changes: Sequence[Change]
    source: str = AUDIENCE  # value syncs: `audience_key` is the trait or prediction key
    events: Sequence[ForwardedEvent] = ()  # event syncs: the events (no changes)

    @property
    def seqs(self) -> tuple[int, int]:
        """The first and last seq of what the batch carries."""
        items = self.events if self.source == EVENTS else self.changes
        return items[0].seq, items[-1].seq

    def __len__(self) -> int:
        return len(self.events) + len(self.changes)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        """The batch `as_json` wrote (a dead letter's payload)."""
        source = data.get("source", AUDIENCE)
        return cls(
            data["sync_id"],
            data.get("audience_key") or data.get("key") or "",
            data["id_type"],
            data["idempotency_key"],
            [Change.from_json(c) for c in data.get("changes", [])],
            source,
            [ForwardedEvent.from_json(e) for e in data.get("events", [])],
        )

    def as_json(self) -> dict[str, Any]:
        """The batch as a JSON document (webhook body, dead-letter payload)."""
        if self.source == EVENTS:
            return {
                "sync_id": self.sync_id,
                "source": EVENTS,
                "id_type": self.id_type,
                "idempotency_key": self.idempotency_key,
                "events": [e.as_json() for e in self.events],
            }
        named: dict[str, Any] = (
            {"audience_key": self.audience_key}
            if self.source == AUDIENCE
            else {"source": self.source, "key": self.audience_key}
        )
        return {
            "sync_id": self.sync_id,
            **named,
            "id_type": self.id_type,
            "idempotency_key": self.idempotency_key,
            "changes": [c.as_json() for c in self.changes],
        }


@dataclass(frozen=True)
class Outcome:
    """What became of one batch: delivered, or refused for good (a dead letter)."""

    retries: int = 0
    refused_status: int | None = None
    refused_body: str = ""

    @property
    def delivered(self) -> bool:
        """True when the destination acknowledged the batch."""
        return self.refused_status is None


@dataclass(frozen=True)
class RunContext:
    """What a destination run may use: the run's id, HTTP plumbing, retry policy, and
    the state the type kept for this sync (saved at once by `save_state`)."""

    run_id: str
    sync_id: str
    session: aiohttp.ClientSession
    policy: RetryPolicy
    bucket: TokenBucket | None
    state: Mapping[str, Any] | None = None
    save_state: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    source: str = AUDIENCE  # what the sync sends (file columns depend on it)


class DestinationRun(Protocol):
    """One run's delivery to one destination."""

    acknowledges_each_batch: bool

    async def deliver(self, batch: Batch) -> Outcome:
        """Deliver the batch (retrying what is worth retrying); raises
        delivery.DeliveryFailed when it gives up without an answer to record."""
        ...

    async def finish(self) -> None:
        """Make everything delivered visible (a no-op for per-batch APIs)."""
        ...

    async def abort(self) -> None:
        """Discard what was not made visible."""
        ...


class AcknowledgedPerBatch:
    """Base of the HTTP API types: each answered request acknowledges its batch, so
    there is nothing to publish at the end and nothing to discard."""

    acknowledges_each_batch = True

    def __init__(self, destination: Destination, context: RunContext) -> None:
        self._destination = destination
        self._context = context

    async def _post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    ) -> HttpAnswer:
        """POST with the destination's timeout, the run's retry policy and rate limit."""
        return await post(
            self._context.session,
            url,
            body,
            headers,
            self._destination.timeout_seconds,
            self._context.policy,
            self._context.bucket,
        )

    async def finish(self) -> None:
        """Nothing to publish: every batch was acknowledged as it went."""
        return None

    async def abort(self) -> None:
        """Nothing to discard."""
        return None


class DestinationType(Protocol):
    """A module under services/sync/destinations/ provides one of these as `TYPE`."""

    def check_options(self, options: Mapping[str, str]) -> list[FieldViolation]:
        """What is wrong with the type-specific `options` (empty when nothing)."""
        ...

    def check_id_type(self, id_type: str) -> str | None:
        """Why a sync to this type cannot name people by `id_type` (None: it can)."""
        ...

    def open_run(self, destination: Destination, context: RunContext) -> DestinationRun:
        """Start delivering one run's batches to `destination`."""
        ...


def no_options(options: Mapping[str, str]) -> list[FieldViolation]:
    """Violations for a type that takes no options: every key given."""
    return [
        FieldViolation(f"destination.options[{key}]", "is not an option of this destination")
        for key in options
    ]


def any_id_type(id_type: str) -> str | None:
    """For types that name people by any identifier: nothing is wrong."""
    return None
