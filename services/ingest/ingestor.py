"""The ingest use case: validate a request's events, drop duplicates and suppressed
identifiers, resolve identity, store everything in one transaction, then update the
hot state and the event stream.

Ordering guarantee (docs/ingest.md): the store's write session holds one lock from
before sequence numbers are drawn until after the Redis update, so sequence order is
commit order and stream ids `<seq>-0` only ever increase. If the Redis step fails or
the process dies after the commit, the publisher's catch-up loop republishes from the
stream cursor; the client's acknowledgement only ever follows the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.ingest.identity import IdentityGraph, IdentityRow, IdentityRules
from services.ingest.model import BatchOutcome, Event, Outcome, RawEvent, Status, Violation
from services.ingest.traits import TraitRow, winners
from services.ingest.validation import validate
from services.shared.clock import Clock
from services.shared.errors import FieldViolation, InvalidArgument

log = logging.getLogger(__name__)

SUPPRESSED_REASON = "suppressed: profile was deleted"
BLOCKED_REASON = "no usable identifier: every identifier is a blocked value"


@dataclass(frozen=True)
class StoredEvent:
    """An accepted event with its sequence and the profile it was attributed to."""

    seq: int
    profile_id: int
    event: Event
    received_at_us: int


@dataclass(frozen=True)
class MergeRecord:
    """A merge as stored and published: `merged_id` now belongs to `survivor_id`."""

    survivor_id: int
    merged_id: int
    event_seq: int
    reason: str


@dataclass
class WritePlan:
    """Everything one batch writes, computed before the first write."""

    workspace_id: str
    now_us: int
    new_profiles: list[tuple[int, int]]  # (profile_id, canonical_id)
    merged_existing: list[tuple[int, int]]  # (stored profile merged away, final survivor)
    identity_links: list[tuple[str, str, int]]  # (type, value, profile_id)
    events: list[StoredEvent]
    traits: list[TraitRow]
    drop_traits_of: list[int]
    last_seen: dict[int, int]
    merges: list[MergeRecord]
    last_seq: int


@dataclass
class WriteResult:
    """What the store changed that the hot state must follow."""

    changed_traits: list[TraitRow]
    # survivor -> every profile id whose canonical_id now points at it (merged ones)
    redirected: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class HotProfile:
    """One profile's hot-state update."""

    profile_id: int
    created_at_us: int
    last_seen_us: int | None
    ids: list[str]  # "<type>:<value>"
    set_traits: dict[str, Any]
    del_traits: list[str]


@dataclass
class HotUpdate:
    """A batch's hot-state changes: merged profiles redirect, then profile updates."""

    workspace_id: str
    redirects: list[tuple[int, int]]  # (merged profile id, survivor id)
    profiles: list[HotProfile]


@dataclass(frozen=True)
class StreamRecord:
    """One entry for the event stream, in stream order (seq, then sub)."""

    seq: int
    sub: int  # 0 for the event, 1.. for merges it caused
    workspace_id: str
    kind: str  # "event" or "merge"
    profile_id: int = 0
    event: dict[str, Any] | None = None
    survivor_id: int = 0
    merged_id: int = 0


class WriteSession(Protocol):
    """One locked write transaction (see EventStore.write_session)."""

    last_seq: int
    published_seq: int

    async def known_messages(self, message_ids: Sequence[str]) -> dict[str, tuple[int, int]]: ...
    async def identities(self, keys: Sequence[tuple[str, str]]) -> list[IdentityRow]: ...
    async def traits_of(self, profile_ids: Sequence[int]) -> list[TraitRow]: ...
    async def allocate_seqs(self, count: int) -> list[int]: ...
    async def allocate_profiles(self, count: int) -> list[int]: ...
    async def write(self, plan: WritePlan) -> WriteResult: ...
    async def commit(self) -> None: ...


class EventStore(Protocol):
    """Durable storage of events and the identity graph."""

    async def identity_rules(self, workspace_id: str) -> dict[str, Any] | None: ...
    async def suppressed(
        self, workspace_id: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]: ...
    def write_session(self, workspace_id: str) -> AbstractAsyncContextManager[WriteSession]: ...


class Publisher(Protocol):
    """Hot state and event stream (Redis)."""

    async def apply(
        self,
        prev_seq: int,
        last_seq: int,
        published_seq: int,
        hot: HotUpdate,
        records: list[StreamRecord],
    ) -> bool: ...
    def wake(self) -> None: ...


def stream_event(event: Event) -> dict[str, Any]:
    """The `event` payload of a stream entry (also rebuilt from the store on catch-up)."""
    return {
        "type": event.type,
        "name": event.name,
        "message_id": event.message_id,
        "user_id": event.user_id,
        "anonymous_id": event.anonymous_id,
        "group_id": event.group_id,
        "previous_id": event.previous_id,
        "timestamp_us": event.timestamp_us,
        "properties": event.properties,
        "traits": event.traits,
        "context": event.context,
    }


class Ingestor:
    """Runs requests of events through validation, storage, hot state and stream."""

    def __init__(self, store: EventStore, publisher: Publisher, clock: Clock) -> None:
        self._store = store
        self._publisher = publisher
        self._clock = clock

    async def ingest(
        self, workspace_id: str, raws: Sequence[RawEvent], single: bool = False
    ) -> BatchOutcome:
        """Ingest events; one Outcome per event in request order.

        `single` names fields "event.<field>" (one-event RPCs) instead of "events[i]...".
        """
        now_us = self._clock.now_us()
        outcomes: list[Outcome | None] = [None] * len(raws)
        valid: list[Event] = []
        for index, raw in enumerate(raws):
            prefix = "event" if single else f"events[{index}]"
            event, violations = validate(raw, index, prefix, now_us)
            if event is None:
                outcomes[index] = Outcome(index, raw.message_id, Status.REJECTED, violations)
            else:
                valid.append(event)
        if valid:
            await self._ingest_valid(workspace_id, valid, outcomes, now_us, single)
        return BatchOutcome([o for o in outcomes if o is not None])

    async def ingest_one(self, workspace_id: str, raw: RawEvent) -> Outcome:
        """Ingest one event; InvalidArgument with field violations if it is rejected."""
        (outcome,) = (await self.ingest(workspace_id, [raw], single=True)).outcomes
        if outcome.status is Status.REJECTED:
            raise InvalidArgument(
                "event rejected: "
                + "; ".join(f"{v.field}: {v.reason}" for v in outcome.violations),
                [FieldViolation(v.field, v.reason) for v in outcome.violations],
            )
        return outcome

    async def _ingest_valid(
        self,
        workspace_id: str,
        valid: list[Event],
        outcomes: list[Outcome | None],
        now_us: int,
        single: bool,
    ) -> None:
        rules = IdentityRules.parse(await self._store.identity_rules(workspace_id))

        def field_of(event: Event, name: str) -> str:
            return f"event.{name}" if single else f"events[{event.index}].{name}"

        # Placeholder ids ("null", "guest", ...) never link; an event with nothing else
        # would otherwise create a profile per event.
        candidates: list[Event] = []
        for event in valid:
            if event.identifiers and all(rules.is_blocked(i.value) for i in event.identifiers):
                violation = Violation(event.index, field_of(event, "user_id"), BLOCKED_REASON)
                outcomes[event.index] = Outcome(
                    event.index, event.message_id, Status.REJECTED, [violation]
                )
            else:
                candidates.append(event)
        keys = sorted({i.key for e in candidates for i in e.identifiers})
        suppressed = await self._store.suppressed(workspace_id, keys) if keys else set()
        accepted: list[Event] = []
        for event in candidates:
            hits = [i for i in event.identifiers if i.key in suppressed]
            if hits:
                violations = [
                    Violation(event.index, field_of(event, i.field), SUPPRESSED_REASON)
                    for i in hits
                ]
                outcomes[event.index] = Outcome(
                    event.index, event.message_id, Status.REJECTED, violations
                )
            else:
                accepted.append(event)
        if not accepted:
            return
        async with self._store.write_session(workspace_id) as session:
            await self._write(session, workspace_id, rules, accepted, outcomes, now_us)

    async def _write(
        self,
        session: WriteSession,
        workspace_id: str,
        rules: IdentityRules,
        accepted: list[Event],
        outcomes: list[Outcome | None],
        now_us: int,
    ) -> None:
        known = await session.known_messages(sorted({e.message_id for e in accepted}))
        fresh: list[Event] = []
        first_in_batch: dict[str, Event] = {}
        duplicates_in_batch: list[Event] = []
        for event in accepted:
            if event.message_id in known:
                seq, profile_id = known[event.message_id]
                outcomes[event.index] = Outcome(
                    event.index, event.message_id, Status.DUPLICATE, seq=seq, profile_id=profile_id
                )
            elif event.message_id in first_in_batch:
                duplicates_in_batch.append(event)
            else:
                first_in_batch[event.message_id] = event
                fresh.append(event)
        if not fresh:
            return

        graph = IdentityGraph(rules, now_us)
        lookup: set[tuple[str, str]] = {i.key for e in fresh for i in e.identifiers}
        for event in fresh:
            if event.previous_id:
                lookup.add(("user_id", event.previous_id))
                lookup.add(("anonymous_id", event.previous_id))
        graph.load(await session.identities(sorted(lookup)))
        attributed = [graph.resolve(event) for event in fresh]

        seqs = await session.allocate_seqs(len(fresh))
        real_ids = await session.allocate_profiles(len(graph.created))
        real = dict(zip(graph.created, real_ids, strict=True))

        def final(profile_id: int) -> int:
            resolved = graph.canonical(profile_id)
            return real.get(resolved, resolved)

        def named(profile_id: int) -> int:
            return real.get(profile_id, profile_id)

        stored = [
            StoredEvent(seq, named(pid), event, now_us)
            for seq, pid, event in zip(seqs, attributed, fresh, strict=True)
        ]
        seq_of_index = {s.event.index: s.seq for s in stored}
        merges = [
            MergeRecord(
                named(m.survivor_id), named(m.merged_id), seq_of_index[m.event_index], m.reason
            )
            for m in graph.merges
        ]
        merged_existing = [
            (m.merged_id, final(m.merged_id)) for m in graph.merges if m.merged_id > 0
        ]
        losers = [loser for loser, _ in merged_existing]
        trait_rows = [
            TraitRow(final(row.profile_id), row.key, row.value, row.timestamp_us, row.seq)
            for row in (await session.traits_of(losers) if losers else [])
        ]
        # Targets are resolved from the resolver's own ids (provisional for new profiles).
        resolved = {event.index: pid for event, pid in zip(fresh, attributed, strict=True)}
        for item in stored:
            if item.event.type == "identify" and item.event.traits:
                target = final(resolved[item.event.index])
                trait_rows.extend(
                    TraitRow(target, key, value, item.event.timestamp_us, item.seq)
                    for key, value in item.event.traits.items()
                )
        last_seen: dict[int, int] = {}
        for item in stored:
            target = final(resolved[item.event.index])
            last_seen[target] = max(last_seen.get(target, 0), item.event.timestamp_us)
        for node in graph.nodes.values():
            if node.last_seen_us is not None and node.profile_id in last_seen:
                target = final(node.profile_id)
                last_seen[target] = max(last_seen[target], node.last_seen_us)

        plan = WritePlan(
            workspace_id=workspace_id,
            now_us=now_us,
            new_profiles=[(real[pid], final(pid)) for pid in graph.created],
            merged_existing=merged_existing,
            identity_links=[(t, v, final(pid)) for (t, v), pid in graph.new_links.items()],
            events=stored,
            traits=list(winners(trait_rows).values()),
            drop_traits_of=losers,
            last_seen=last_seen,
            merges=merges,
            last_seq=max(session.last_seq, seqs[-1]),
        )
        prev_seq, published_seq = session.last_seq, session.published_seq
        result = await session.write(plan)
        await session.commit()

        for item in stored:
            outcomes[item.event.index] = Outcome(
                item.event.index,
                item.event.message_id,
                Status.ACCEPTED,
                profile_id=item.profile_id,
                seq=item.seq,
            )
        by_message = {s.event.message_id: s for s in stored}
        for event in duplicates_in_batch:
            original = by_message[event.message_id]
            outcomes[event.index] = Outcome(
                event.index,
                event.message_id,
                Status.DUPLICATE,
                seq=original.seq,
                profile_id=original.profile_id,
            )

        hot = self._hot_update(workspace_id, graph, final, last_seen, result, plan)
        records = self._records(workspace_id, stored, merges)
        try:
            published = await self._publisher.apply(
                prev_seq, plan.last_seq, published_seq, hot, records
            )
            if not published:
                self._publisher.wake()  # the stream is behind: catch up from the store
        except Exception:
            # Committed is acknowledged: the catch-up loop republishes from the cursor.
            log.exception("hot state / stream update failed after commit; catching up")
            self._publisher.wake()

    @staticmethod
    def _hot_update(
        workspace_id: str,
        graph: IdentityGraph,
        final,  # type: ignore[no-untyped-def]
        last_seen: dict[int, int],
        result: WriteResult,
        plan: WritePlan,
    ) -> HotUpdate:
        changed: dict[int, tuple[dict[str, Any], list[str]]] = {}
        for row in result.changed_traits:
            sets, deletes = changed.setdefault(row.profile_id, ({}, []))
            if row.value is None:
                deletes.append(row.key)
            else:
                sets[row.key] = row.value
        profiles: list[HotProfile] = []
        for node in graph.nodes.values():
            target = final(node.profile_id)
            if target not in last_seen:
                continue  # loaded for context, untouched by this batch
            sets, deletes = changed.get(target, ({}, []))
            profiles.append(
                HotProfile(
                    profile_id=target,
                    created_at_us=node.created_at_us,
                    last_seen_us=last_seen.get(target),
                    ids=sorted(f"{t}:{v}" for t, values in node.ids.items() for v in values),
                    set_traits=sets,
                    del_traits=deletes,
                )
            )
        redirects = [
            (merged, survivor)
            for survivor, merged_ids in result.redirected.items()
            for merged in merged_ids
        ]
        redirects.extend(
            (pid, canonical) for pid, canonical in plan.new_profiles if pid != canonical
        )
        return HotUpdate(workspace_id, redirects, profiles)

    @staticmethod
    def _records(
        workspace_id: str, stored: list[StoredEvent], merges: list[MergeRecord]
    ) -> list[StreamRecord]:
        records = [
            StreamRecord(s.seq, 0, workspace_id, "event", s.profile_id, stream_event(s.event))
            for s in stored
        ]
        subs: dict[int, int] = {}
        for merge in merges:
            sub = subs.get(merge.event_seq, 0) + 1
            subs[merge.event_seq] = sub
            records.append(
                StreamRecord(
                    merge.event_seq,
                    sub,
                    workspace_id,
                    "merge",
                    survivor_id=merge.survivor_id,
                    merged_id=merge.merged_id,
                )
            )
        records.sort(key=lambda r: (r.seq, r.sub))
        return records
