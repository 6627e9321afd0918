"""The ingest use case: validate a request's events, drop duplicates and suppressed
identifiers, resolve identity, store everything in one transaction, then update the
hot state and the event stream. Concurrent requests are written together (group
commit, see Ingestor).

Ordering guarantee (docs/ingest.md): the writer holds one lock from before sequence
numbers are drawn until after the Redis update, so sequence order is commit order and
stream ids `<seq>-0` only ever increase. It keeps that lock across consecutive groups
and pipelines them: group N's Redis update runs while group N+1 is written to
Postgres, the Redis updates chained in commit order, and the lock is released only
once every update of the hold is done. If the Redis step fails or the process dies
after the commit, the publisher's catch-up loop republishes from the stream cursor;
the client's acknowledgement only ever follows the commit.

With several stream shards (INGEST_SHARDS, docs/ingest.md "Shards") the above holds
per shard: the front Ingestor splits each request by the shard locks its events need
(`_route`, `_split`) and hands the parts to lanes, one writer per set of shards, each
taking its locks in ascending shard order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson
from opentelemetry import trace

from services.ingest.identity import IdentityGraph, IdentityRecord, IdentityRules
from services.ingest.model import BatchOutcome, Event, Outcome, RawEvent, Status, Violation
from services.ingest.traits import TraitRow, winners
from services.ingest.validation import validate
from services.shared import telemetry
from services.shared.clock import Clock
from services.shared.errors import FieldViolation, InvalidArgument
from services.shared.streams import shard_of_profile

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

SUPPRESSED_REASON = "suppressed: profile was deleted"
BLOCKED_REASON = "no usable identifier: every identifier is a blocked value"


class StoredEvent(NamedTuple):
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


@dataclass(slots=True)
class HotProfile:
    """One profile's hot-state update."""

    profile_id: int
    created_at_us: int
    last_seen_us: int | None
    ids: list[str]  # "<type>:<value>"
    set_traits: dict[str, Any]
    del_traits: list[str]


class SeenProfile(NamedTuple):
    """A profile whose only hot-state change is being seen (most of a batch's: tracks
    and pages of known people), sent as three numbers instead of a HotProfile."""

    profile_id: int
    created_at_us: int
    last_seen_us: int


@dataclass
class HotUpdate:
    """A batch's hot-state changes: merged profiles redirect, then profile updates."""

    workspace_id: str
    redirects: list[tuple[int, int]]  # (merged profile id, survivor id)
    profiles: list[HotProfile]
    # Profiles that gained no identifier and changed no trait: last seen only.
    seen: list[SeenProfile] = field(default_factory=list)


# A profile whose traits this batch did not change (shared, never mutated).
_NO_TRAIT_CHANGES: tuple[dict[str, Any], list[str]] = ({}, [])


class StreamRecord(NamedTuple):
    """One entry for the event stream, in stream order (seq, then sub). NamedTuples
    here and for StoredEvent: one of each per event, cheaper than dataclasses."""

    seq: int
    sub: int  # 0 for the event, 1.. for merges it caused
    workspace_id: str
    kind: str  # "event" or "merge"
    profile_id: int = 0
    event: bytes | None = None  # the event payload as JSON (stream_event)
    survivor_id: int = 0
    merged_id: int = 0
    # The W3C trace context of the request that sent the event, as flat name/value
    # pairs (empty when not tracing, and on catch-up).
    trace: tuple[str, ...] = ()


class ShardBatch(NamedTuple):
    """One shard's part of a batch: its cursor before and after, and its entries."""

    shard: int
    prev_seq: int
    last_seq: int
    published_seq: int
    records: list[StreamRecord]


class Reroute(Exception):
    """The profiles a request's events touch moved to shards whose locks its lane does
    not hold (a merge committed between the router's look-up and the lock): nothing
    was written; the router routes the events again."""


def key_shard(workspace_id: str, key: tuple[str, str], shards: int) -> int:
    """The shard whose lock guards an identifier no profile holds yet (stable across
    processes and restarts: CRC-32, not Python's salted hash)."""
    return zlib.crc32(f"{workspace_id}\x00{key[0]}\x00{key[1]}".encode()) % shards


class WriteSession(Protocol):
    """One locked write transaction (see EventStore.write_session)."""

    last_seq: int
    published_seq: int
    # Per shard whose lock the session holds: (last committed seq, last published).
    cursors: dict[int, tuple[int, int]]
    identity_rules: dict[str, Any] | None  # the workspace's stored rules (None: defaults)

    async def suppressed(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]: ...
    async def known_messages(self, message_ids: Sequence[str]) -> dict[str, tuple[int, int]]: ...
    async def screen(
        self, keys: Sequence[tuple[str, str]], message_ids: Sequence[str]
    ) -> tuple[set[tuple[str, str]], dict[str, tuple[int, int]]]: ...
    async def identities(
        self, keys: Sequence[tuple[str, str]], holder_keys: Sequence[tuple[str, str]] = ()
    ) -> list[IdentityRecord]: ...
    async def traits_of(self, profile_ids: Sequence[int]) -> list[TraitRow]: ...
    async def allocate_seqs(self, count: int) -> list[int]: ...
    async def allocate_profiles(self, count: int, shards: Sequence[int] = ()) -> list[int]: ...
    async def allocate(
        self, seq_count: int, profile_count: int, shards: Sequence[int] = ()
    ) -> tuple[list[int], list[int]]: ...
    async def write(self, plan: WritePlan) -> WriteResult: ...
    async def commit(self) -> None: ...


class EventStore(Protocol):
    """Durable storage of events and the identity graph."""

    # How many stream shards (1: one lock, one stream; more: see Ingestor._route).
    shards: int

    def connection(self) -> AbstractAsyncContextManager[Any]:
        """A connection for consecutive holds of the locks (what `locked` takes)."""
        ...

    def locked(
        self, shards: Sequence[int] = (0,), connection: Any = None
    ) -> AbstractAsyncContextManager[Any]:
        """Hold the shards' write locks for the block, on `connection` if given (yields
        what write_session takes as `held`)."""
        ...

    def write_session(
        self, workspace_id: str, held: Any = None, shards: Sequence[int] = (0,)
    ) -> AbstractAsyncContextManager[WriteSession]: ...

    async def holders(
        self, workspace_id: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]: ...


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
    async def apply_shards(self, hot: HotUpdate, batches: list[ShardBatch]) -> bool: ...
    def wake(self) -> None: ...
    def trace_context(self) -> tuple[str, ...]: ...


def _succeed(requests: list[_Request]) -> None:
    for request in requests:
        if not request.done.done():
            request.done.set_result(None)


def _write_span(group: _Group) -> contextlib.AbstractContextManager[trace.Span | None]:
    """The span of writing a group: the writer task serves many requests, so its
    statements are put in the trace of the group's first request (linked to the
    others) rather than of whichever request happened to start the task. Nothing while
    tracing is off."""
    if not telemetry.tracing_enabled():
        return contextlib.nullcontext()
    return telemetry.continued_span(
        _tracer,
        "ingest.write",
        (dict(zip(r.trace[::2], r.trace[1::2], strict=True)) for r in group.requests),
        {"audiences.workspace_id": group.workspace_id, "audiences.requests": len(group.requests)},
    )


def _fail(requests: list[_Request], error: BaseException) -> None:
    for request in requests:
        if not request.done.done():
            request.done.set_exception(error)


def stream_event(
    event: Event | Any,
    properties: bytes | str | None,
    traits: bytes | str | None,
    context: bytes | str | None,
) -> bytes:
    """The `event` payload of a stream entry as JSON: the fields of `event` (an Event,
    or a stored row on catch-up) with the three payloads given as JSON text, which is
    inserted as it is (orjson.Fragment), not decoded and encoded again."""
    return orjson.dumps(
        {
            "type": event.type,
            "name": event.name,
            "message_id": event.message_id,
            "user_id": event.user_id,
            "anonymous_id": event.anonymous_id,
            "group_id": event.group_id,
            "previous_id": event.previous_id,
            "timestamp_us": event.timestamp_us,
            "properties": None if properties is None else orjson.Fragment(properties),
            "traits": None if traits is None else orjson.Fragment(traits),
            "context": None if context is None else orjson.Fragment(context),
        }
    )


# The most events one group writes in one transaction: several concurrent requests
# worth, so round trips and the write lock are paid per group, while one group's
# statements stay short enough to keep the acknowledgement latency low.
MAX_GROUP_EVENTS = 4000
# The most groups the writer writes under one hold of the write lock before letting
# go: the catch-up loop (and another ingest process) needs the lock now and then.
MAX_GROUPS_PER_HOLD = 8
# With several shards, a lane lets go after each group: every request of every
# process has a part on (nearly) every shard, so a lane keeping shard k for 8 groups
# stalls all other processes' requests on their shard-k part while their other lanes
# idle (a convoy). Lanes of different shards still overlap within a process.
# Measured (bench/ingest_scale.py, 4 shards, 2 processes x 0.1 CPU, one round each):
# 2.21x one process with 1 group per hold, 1.20x with 8; p99 2.9 s against 6.6 s.
MAX_GROUPS_PER_HOLD_SHARDED = 1
# How often a request's events are routed again when a merge on another process moved
# their profiles to other shards between the router's look-up and the lock.
MAX_REROUTES = 16
# Identifiers whose holders a front remembers (per process), so a returning person's
# request needs no look-up before its locks.
HOLDER_CACHE_SIZE = 500_000
# Work that overlaps a group's statements hands the loop back this often (events), so
# the statements wait at most about a millisecond of it each.
_YIELD_EVERY = 250


@dataclass
class _Request:
    """One caller's validated events, waiting for the group writer."""

    workspace_id: str
    events: list[Event]
    outcomes: list[Outcome | None]
    single: bool
    trace: tuple[str, ...]
    done: asyncio.Future[None]

    def field(self, event: Event, name: str) -> str:
        """The request field path of `event`'s field `name`."""
        return f"event.{name}" if self.single else f"events[{event.index}].{name}"


@dataclass
class _Group:
    """Requests of one workspace written in one transaction."""

    workspace_id: str
    requests: list[_Request]
    committed: bool = False


class Ingestor:
    """Runs requests of events through validation, storage, hot state and stream.

    Group commit: callers validate their own events, then hand them to one writer task
    per process, which takes every request waiting for the same workspace (up to
    MAX_GROUP_EVENTS events) and writes them as one transaction under the write lock:
    one duplicate check, one identity lookup, one statement per table, one commit and
    one Redis round trip for the whole group. Each caller still gets its own per-event
    outcomes, exactly as if the requests had been written one after another in arrival
    order (the first copy of a message id wins, also across requests of a group).
    """

    def __init__(
        self,
        store: EventStore,
        publisher: Publisher,
        clock: Clock,
        lock_shards: tuple[int, ...] | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._clock = clock
        self._shards: int = getattr(store, "shards", 1)
        # A lane writes under the locks of `lock_shards`; the front (None) routes each
        # request's events to lanes when there are several shards (`_route`), and is
        # itself the one lane when there is one.
        self._lock_shards = lock_shards or (0,)
        self._routes = self._shards > 1 and lock_shards is None
        self._lanes: dict[tuple[int, ...], Ingestor] = {}
        # Groups written under one hold of the locks (lanes take their front's).
        self.groups_per_hold = (
            MAX_GROUPS_PER_HOLD if self._shards == 1 else MAX_GROUPS_PER_HOLD_SHARDED
        )
        # workspace -> identifier -> its holder as last seen (the router's guesses).
        self._holder_cache: dict[str, dict[tuple[str, str], int]] = {}
        self._queue: deque[_Request] = deque()
        # Taken by the writer, not answered yet (failed if the writer is cancelled).
        self._in_flight: list[_Request] = []
        self._arrived = asyncio.Event()  # set whenever a request is queued
        self._writer: asyncio.Task[None] | None = None

    async def ingest(
        self, workspace_id: str, raws: Sequence[RawEvent], single: bool = False
    ) -> BatchOutcome:
        """Ingest events; one Outcome per event in request order.

        `single` names fields "event.<field>" (one-event RPCs) instead of "events[i]...".
        Returns once every accepted event is committed.
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
            await self._submit(workspace_id, valid, outcomes, single)
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

    async def _submit(
        self,
        workspace_id: str,
        valid: list[Event],
        outcomes: list[Outcome | None],
        single: bool,
    ) -> None:
        """Queue the events for the group writer and wait until they are written."""
        if self._routes:
            await self._route(workspace_id, valid, outcomes, single)
            return
        loop = asyncio.get_running_loop()
        request = _Request(
            workspace_id,
            valid,
            outcomes,
            single,
            # Captured here, in the caller's context: the writer task runs in its own.
            self._publisher.trace_context(),
            loop.create_future(),
        )
        self._queue.append(request)
        self._arrived.set()
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            # A fresh event per writer: an asyncio.Event binds to the loop it waits on.
            self._arrived = asyncio.Event()
            self._arrived.set()
            self._writer = loop.create_task(self._drain())
        # Shielded: a caller that goes away (deadline, disconnect) must not cancel the
        # future the writer will complete; its events are still written (a retry then
        # finds them as duplicates), as a commit racing a disconnect always was.
        await asyncio.shield(request.done)

    async def _route(
        self,
        workspace_id: str,
        events: list[Event],
        outcomes: list[Outcome | None],
        single: bool,
    ) -> None:
        """Write a request's events through the lanes of the shards they touch.

        The events are split by the shard locks they need (`_split`); each part is
        queued on the lane of exactly those shards (its writer takes them in ascending
        order), and the parts are written concurrently. A part whose profiles moved
        to other shards meanwhile (Reroute: nothing of it was written) is split again.
        Every outcome lands in `outcomes` by the event's request index.
        """
        pending = events
        for _ in range(MAX_REROUTES):
            parts = await self._split(workspace_id, pending)
            results = await asyncio.gather(
                *(
                    self._lane(shards)._submit(workspace_id, part, outcomes, single)
                    for shards, part in parts
                ),
                return_exceptions=True,
            )
            pending = []
            error: BaseException | None = None
            for (_, part), result in zip(parts, results, strict=True):
                if isinstance(result, Reroute):
                    pending.extend(part)
                elif isinstance(result, BaseException) and error is None:
                    error = result
            if error is not None:
                raise error
            if not pending:
                return
            pending.sort(key=lambda event: event.index)
            self._forget_holders(workspace_id, pending)
        raise RuntimeError("the profiles of a request kept moving between shards")

    def _lane(self, shards: tuple[int, ...]) -> Ingestor:
        lane = self._lanes.get(shards)
        if lane is None:
            lane = self._lanes[shards] = Ingestor(self._store, self._publisher, self._clock, shards)
            lane.groups_per_hold = self.groups_per_hold
        return lane

    async def _split(
        self, workspace_id: str, events: list[Event]
    ) -> list[tuple[tuple[int, ...], list[Event]]]:
        """The events grouped by the shard locks they need, in request order per group.

        An identifier held by a profile needs that profile's shard; one nobody holds
        needs its `key_shard` (whoever creates it holds that lock, so two writers can
        never both create it). Events that share an identifier, a holder or a
        message id are connected (union-find) and go together, with the union of their
        shards: their relative order decides links, merges and duplicates, as on one
        shard. The holders are read without a lock; a lane checks them again under
        its locks and answers Reroute when one moved.
        """
        n = self._shards
        keys_of: list[list[tuple[str, str]]] = []
        wanted: set[tuple[str, str]] = set()
        for event in events:
            keys = [identifier.key for identifier in event.identifiers]
            if event.previous_id:
                keys += [("user_id", event.previous_id), ("anonymous_id", event.previous_id)]
            keys_of.append(keys)
            wanted.update(keys)
        holders = await self._holders(workspace_id, wanted)
        # Components, relabelling the smaller into the larger. Nodes: identifiers as
        # their (type, value) keys, holders as their int ids, and a message id (as
        # ("m", id)) only when the request repeats it.
        repeated = len({event.message_id for event in events}) < len(events)
        component: dict[Any, int] = {}
        members: dict[int, list[Any]] = {}
        shards_of: dict[int, set[int]] = {}
        get = component.get
        for number, (event, keys) in enumerate(zip(events, keys_of, strict=True)):
            if len(keys) == 1 and not repeated:
                # Most events: one identifier, and its holder when there is one.
                (key,) = keys
                holder = holders.get(key)
                found = get(key)
                if holder is not None:
                    other = get(holder)
                    if other is not None and found is not None and other != found:
                        found = self._join(component, members, shards_of, found, other)
                    elif found is None:
                        found = other
                if found is None:
                    found = number
                    members[found] = [key] if holder is None else [key, holder]
                    shards_of[found] = {
                        key_shard(workspace_id, key, n)
                        if holder is None
                        else shard_of_profile(holder, n)
                    }
                    component[key] = found
                    if holder is not None:
                        component[holder] = found
                else:
                    for node in (key,) if holder is None else (key, holder):
                        if get(node) != found:
                            component[node] = found
                            members[found].append(node)
                    shards_of[found].add(
                        key_shard(workspace_id, key, n)
                        if holder is None
                        else shard_of_profile(holder, n)
                    )
                continue
            nodes: list[Any] = [("m", event.message_id)] if repeated else []
            shards: set[int] = set()
            for key in keys:
                nodes.append(key)
                holder = holders.get(key)
                if holder is None:
                    shards.add(key_shard(workspace_id, key, n))
                else:
                    nodes.append(holder)
                    shards.add(shard_of_profile(holder, n))
            target: int | None = None
            for node in nodes:
                other = get(node)
                if other is None or other == target:
                    continue
                target = (
                    other
                    if target is None
                    else self._join(component, members, shards_of, target, other)
                )
            if target is None:
                target = number
                members[target] = []
                shards_of[target] = set()
            for node in nodes:
                if get(node) != target:
                    component[node] = target
                    members[target].append(node)
            shards_of[target] |= shards
        parts: dict[tuple[int, ...], list[Event]] = {}
        for event, keys in zip(events, keys_of, strict=True):
            # Through a node: the event's component may have been joined since. (A
            # valid event has an identifier.)
            shards = shards_of[component[keys[0]]] if keys else set()
            parts.setdefault(tuple(sorted(shards)) or (0,), []).append(event)
        return list(parts.items())

    @staticmethod
    def _join(
        component: dict[Any, int],
        members: dict[int, list[Any]],
        shards_of: dict[int, set[int]],
        a: int,
        b: int,
    ) -> int:
        """Join components a and b (the smaller's nodes relabelled); returns the one
        that remains."""
        if len(members[a]) < len(members[b]):
            a, b = b, a
        for node in members.pop(b):
            component[node] = a
            members[a].append(node)
        shards_of[a] |= shards_of.pop(b)
        return a

    async def _holders(
        self, workspace_id: str, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """The holders of `keys`: from this process's cache of holders seen before,
        the rest from the store (one query, no lock). A cached holder may be stale (a
        merge elsewhere moved the identifier): the lane's check under its locks
        catches that (Reroute), and the reroute forgets the part's keys first."""
        cache = self._holder_cache.setdefault(workspace_id, {})
        found: dict[tuple[str, str], int] = {}
        missing: list[tuple[str, str]] = []
        for key in keys:
            holder = cache.get(key)
            if holder is None:
                missing.append(key)
            else:
                found[key] = holder
        if missing:
            loaded = await self._store.holders(workspace_id, sorted(missing))
            if len(cache) + len(loaded) > HOLDER_CACHE_SIZE:
                cache.clear()  # crude, and rare: a returning person costs one look-up
            cache.update(loaded)
            found.update(loaded)
        return found

    def _forget_holders(self, workspace_id: str, events: list[Event]) -> None:
        cache = self._holder_cache.get(workspace_id, {})
        for event in events:
            for identifier in event.identifiers:
                cache.pop(identifier.key, None)
            if event.previous_id:
                cache.pop(("user_id", event.previous_id), None)
                cache.pop(("anonymous_id", event.previous_id), None)

    def _check_held(self, workspace_id: str, graph: IdentityGraph, after_resolve: bool) -> None:
        """Reroute unless every stored profile the group touches (and, once resolved,
        every identifier it links for the first time) is guarded by a held lock."""
        if self._shards == 1:
            return
        held = self._lock_shards
        n = self._shards
        if not after_resolve:
            if any(pid > 0 and shard_of_profile(pid, n) not in held for pid in graph.nodes):
                raise Reroute()
            return
        if any(key_shard(workspace_id, key, n) not in held for key in graph.new_links):
            raise Reroute()

    def _take_group(self) -> _Group:
        """The oldest waiting request plus every later one of its workspace that fits."""
        first = self._queue.popleft()
        group = _Group(first.workspace_id, [first])
        size = len(first.events)
        others: deque[_Request] = deque()
        while self._queue:
            request = self._queue.popleft()
            if request.workspace_id != first.workspace_id:
                others.append(request)
            elif size + len(request.events) <= MAX_GROUP_EVENTS:
                group.requests.append(request)
                size += len(request.events)
            else:
                others.append(request)
                others.extend(self._queue)
                self._queue.clear()
        self._queue.extendleft(reversed(others))
        return group

    async def _drain(self) -> None:
        """The writer task: writes groups until nothing is waiting, then ends."""
        try:
            while self._queue:
                # One connection for the holds while groups keep arriving (a pool
                # checkout costs a ping of three round trips). Let go after a group
                # failed before its commit: the connection may be what failed.
                failed: tuple[_Group, Exception] | None = None
                async with self._store.connection() as connection:
                    while self._queue and failed is None:
                        failed = await self._hold_and_write(connection)
                if failed is not None:
                    await self._write_alone(*failed)
        except BaseException:
            # Cancelled (shutdown): no caller may wait forever.
            stranded = [*self._in_flight, *self._queue]
            self._queue.clear()
            _fail(stranded, RuntimeError("the ingest writer stopped"))
            raise

    async def _hold_and_write(self, connection: Any = None) -> tuple[_Group, Exception] | None:
        """Write waiting groups under one hold of the write lock (on `connection`, from
        the store's `connection()`), pipelined.

        Each committed group's Redis update (and its callers' answers) is chained
        behind the previous group's, and runs while the next group is written to
        Postgres. The lock is released only after the last update of the hold, so no
        other writer (catch-up, another process) can commit in between. Returns the
        group that failed before its commit, with the error, if one did.
        """
        tail: asyncio.Task[bool] | None = None
        failed: tuple[_Group, Exception] | None = None
        try:
            async with self._store.locked(self._lock_shards, connection) as held:
                for _ in range(self.groups_per_hold):
                    if not self._queue and not await self._more_before(tail):
                        break
                    group = self._take_group()
                    self._in_flight.extend(group.requests)
                    # The group's statements and stream update, in the trace of the
                    # request that sent its first event (no span while tracing is off).
                    with _write_span(group):
                        try:
                            publish = await self._write_group(group, held)
                        except Exception as error:
                            if not group.committed:
                                failed = (group, error)  # retried after the lock is let go
                                break
                            self._forget(group)
                            _fail(group.requests, error)
                            continue
                        tail = asyncio.get_running_loop().create_task(
                            self._finish(tail, group, publish)
                        )
                if tail is not None:
                    await tail
        finally:
            if tail is not None and not tail.done():
                tail.cancel()
        return failed

    async def _more_before(self, tail: asyncio.Task[bool] | None) -> bool:
        """Wait until a request arrives or the pending Redis updates are done; True if
        a request arrived first (it is written under the same hold, overlapping)."""
        if tail is None or tail.done():
            return False
        self._arrived.clear()
        arrival = asyncio.get_running_loop().create_task(self._arrived.wait())
        try:
            await asyncio.wait((tail, arrival), return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()
        return bool(self._queue)

    async def _finish(
        self,
        previous: asyncio.Task[bool] | None,
        group: _Group,
        publish: Callable[[], Awaitable[bool]] | None,
    ) -> bool:
        """After the previous group's: this group's Redis update, then its answers.

        Returns False when the update did not publish (the catch-up loop takes over).
        """
        published = True
        if previous is not None:
            published = await previous
        if publish is not None:
            published = await publish()
        self._forget(group)
        _succeed(group.requests)
        return published

    def _forget(self, group: _Group) -> None:
        for request in group.requests:
            self._in_flight.remove(request)

    async def _write_alone(self, group: _Group, error: Exception) -> None:
        """A group failed before its commit: nothing of it was written. Write each
        request on its own, so whatever failed fails only the request that caused it."""
        if len(group.requests) == 1:
            self._forget(group)
            _fail(group.requests, error)
            return
        log.warning("group write failed; writing its requests one by one")
        for request in group.requests:
            alone = _Group(group.workspace_id, [request])
            try:
                publish = await self._write_group(alone)
                if publish is not None:
                    await publish()
            except Exception as failure:
                _fail([request], failure)
            else:
                _succeed([request])
        self._forget(group)

    async def _write_group(
        self, group: _Group, held: Any = None
    ) -> Callable[[], Awaitable[bool]] | None:
        """Reject blocked and suppressed events, then write the rest in one transaction.

        Returns the group's Redis update, to run after the previous group's (None when
        nothing was written). With `held`, writes under that hold of the write lock.
        """
        workspace_id = group.workspace_id
        now_us = self._clock.now_us()
        # The rules and suppressions are read in the write transaction (the rules with
        # its first statement): on their own pooled connections they cost a checkout
        # ping, BEGIN, SELECT and ROLLBACK each, per group.
        async with self._store.write_session(workspace_id, held, self._lock_shards) as session:
            rules = IdentityRules.parse(session.identity_rules)
            accepted, known = await self._admissible(session, group, rules)
            if not accepted:
                return None
            return await self._write(session, group, rules, accepted, known, now_us)

    async def _admissible(
        self, session: WriteSession, group: _Group, rules: IdentityRules
    ) -> tuple[list[tuple[_Request, Event]], dict[str, tuple[int, int]]]:
        """The group's events that may be written (blocked and suppressed ones get their
        REJECTED outcome), and the stored seq and profile of each of their message ids
        already accepted (read with the suppressions, in one round trip: for every
        event not blocked, a superset of those that may be written)."""
        # Placeholder ids ("null", "guest", ...) never link; an event with nothing else
        # would otherwise create a profile per event.
        candidates: list[tuple[_Request, Event]] = []
        for request in group.requests:
            for event in request.events:
                ids = event.identifiers
                if len(ids) == 1:  # most events: no generator for one identifier
                    blocked = rules.is_blocked(ids[0].value)
                else:
                    blocked = bool(ids) and all(rules.is_blocked(i.value) for i in ids)
                if blocked:
                    violation = Violation(
                        event.index, request.field(event, "user_id"), BLOCKED_REASON
                    )
                    request.outcomes[event.index] = Outcome(
                        event.index, event.message_id, Status.REJECTED, [violation]
                    )
                else:
                    candidates.append((request, event))
        keys = sorted({i.key for _, e in candidates for i in e.identifiers})
        message_ids = sorted({e.message_id for _, e in candidates})
        suppressed, known = await session.screen(keys, message_ids) if candidates else (set(), {})
        accepted: list[tuple[_Request, Event]] = []
        for request, event in candidates:
            hits = [i for i in event.identifiers if i.key in suppressed] if suppressed else None
            if hits:
                violations = [
                    Violation(event.index, request.field(event, i.field), SUPPRESSED_REASON)
                    for i in hits
                ]
                request.outcomes[event.index] = Outcome(
                    event.index, event.message_id, Status.REJECTED, violations
                )
            else:
                accepted.append((request, event))
        return accepted, known

    async def _write(
        self,
        session: WriteSession,
        group: _Group,
        rules: IdentityRules,
        accepted: list[tuple[_Request, Event]],
        known: dict[str, tuple[int, int]],
        now_us: int,
    ) -> Callable[[], Awaitable[bool]] | None:
        workspace_id = group.workspace_id
        fresh: list[tuple[_Request, Event]] = []
        first_copy: set[str] = set()
        duplicates: list[tuple[_Request, Event]] = []
        for request, event in accepted:
            if event.message_id in known:
                seq, profile_id = known[event.message_id]
                request.outcomes[event.index] = Outcome(
                    event.index, event.message_id, Status.DUPLICATE, seq=seq, profile_id=profile_id
                )
            elif event.message_id in first_copy:
                duplicates.append((request, event))
            else:
                first_copy.add(event.message_id)
                fresh.append((request, event))
        if not fresh:
            return None
        events = [event for _, event in fresh]

        graph = IdentityGraph(rules, now_us)
        # An event whose only identifier is a stored one resolves to its holder without
        # looking at the holder's other identifiers (nothing to attach, no merge, no
        # limit to check), so for those keys only the holder is loaded: most of a
        # returning-users group (a known user's track) is one key of a profile that
        # holds three. Every profile an event with two or more identifiers (or an
        # alias) can link or merge holds one of that event's keys, and is loaded whole.
        lookup: set[tuple[str, str]] = set()
        holder_only: set[tuple[str, str]] = set()
        for event in events:
            ids = event.identifiers
            if len(ids) == 1 and not event.previous_id:
                holder_only.add(ids[0].key)
                continue
            lookup.update(i.key for i in ids)
            if event.previous_id:
                lookup.add(("user_id", event.previous_id))
                lookup.add(("anonymous_id", event.previous_id))
        holder_only -= lookup
        graph.load(await session.identities(sorted(lookup), sorted(holder_only)))
        self._check_held(workspace_id, graph, after_resolve=False)
        # Merges record the event's position in `events` (requests' indexes repeat).
        new_shards: list[int] = []
        if self._shards == 1:
            attributed = [graph.resolve(e, position) for position, e in enumerate(events)]
        else:
            attributed = []
            for position, event in enumerate(events):
                made = len(graph.created)
                attributed.append(graph.resolve(event, position))
                for _ in graph.created[made:]:
                    new_shards.append(self._new_profile_shard(workspace_id, graph, event))
            self._check_held(workspace_id, graph, after_resolve=True)

        seqs, real_ids = await session.allocate(len(events), len(graph.created), new_shards)
        real = dict(zip(graph.created, real_ids, strict=True))

        def final(profile_id: int) -> int:
            resolved = graph.canonical(profile_id)
            return real.get(resolved, resolved)

        def named(profile_id: int) -> int:
            return real.get(profile_id, profile_id)

        stored = [
            StoredEvent(seq, real.get(pid, pid), event, now_us)  # named(pid), inline
            for seq, pid, event in zip(seqs, attributed, events, strict=True)
        ]
        merges = [
            MergeRecord(named(m.survivor_id), named(m.merged_id), seqs[m.event_index], m.reason)
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
        targets = [final(pid) for pid in attributed]
        last_seen: dict[int, int] = {}
        for item, target in zip(stored, targets, strict=True):
            event = item.event
            if event.type == "identify" and event.traits:
                trait_rows.extend(
                    TraitRow(target, key, value, event.timestamp_us, item.seq)
                    for key, value in event.traits.items()
                )
            seen = last_seen.get(target)
            if seen is None or seen < event.timestamp_us:
                last_seen[target] = event.timestamp_us
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
        # The statements and the commit run as a task, so that the Python needing
        # nothing from them (stream records, the callers' outcomes) runs while Postgres
        # works instead of after it. Outcomes set before the commit are only read once
        # the caller is answered, which follows the commit; a group that fails is
        # written again request by request, which sets them anew.
        writing = asyncio.ensure_future(self._store_plan(session, plan))
        try:
            traces = [request.trace for request, _ in fresh]
            records = await self._records(workspace_id, stored, traces, merges)
            batches = self._shard_batches(session, records, plan.last_seq)
            await asyncio.sleep(0)
            self._set_outcomes(fresh, stored, duplicates)
        except BaseException:
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
            raise
        result = await writing
        group.committed = True

        async def publish() -> bool:
            # Built here, not before returning: this Python runs while the writer
            # waits on the next group's Postgres statements.
            hot = self._hot_update(workspace_id, graph, final, last_seen, result, plan)
            try:
                if batches is None:
                    published = await self._publisher.apply(
                        prev_seq, plan.last_seq, published_seq, hot, records
                    )
                else:
                    published = await self._publisher.apply_shards(hot, batches)
            except Exception:
                # Committed is acknowledged: the catch-up loop republishes from the cursor.
                log.exception("hot state / stream update failed after commit; catching up")
                published = False
            if not published:
                self._publisher.wake()  # the stream is behind: catch up from the store
            return published

        return publish

    def _new_profile_shard(self, workspace_id: str, graph: IdentityGraph, event: Event) -> int:
        """The shard of a profile `event` created: that of the identifier naming it (new,
        so its lock is held), so that person's later events need that one lock."""
        usable = graph.usable(event)
        if usable:
            shard = key_shard(workspace_id, usable[0].key, self._shards)
            if shard in self._lock_shards:
                return shard
        return self._lock_shards[0]

    def _shard_batches(
        self, session: WriteSession, records: list[StreamRecord], last_seq: int
    ) -> list[ShardBatch] | None:
        """Each held shard's entries (None with one shard: `Publisher.apply`). An event
        goes to its profile's shard; a merge to its survivor's and its merged
        profile's (both held), so each side's stream shows where the profile went."""
        if self._shards == 1:
            return None
        n = self._shards
        parts: dict[int, list[StreamRecord]] = {shard: [] for shard in self._lock_shards}
        for record in records:
            if record.sub == 0:
                parts[shard_of_profile(record.profile_id, n)].append(record)
                continue
            survivor = shard_of_profile(record.survivor_id, n)
            parts[survivor].append(record)
            merged = shard_of_profile(record.merged_id, n)
            if merged != survivor:
                parts[merged].append(record)
        return [
            ShardBatch(shard, session.cursors[shard][0], last_seq, session.cursors[shard][1], part)
            for shard, part in parts.items()
        ]

    @staticmethod
    async def _store_plan(session: WriteSession, plan: WritePlan) -> WriteResult:
        result = await session.write(plan)
        await session.commit()
        return result

    @staticmethod
    def _set_outcomes(
        fresh: list[tuple[_Request, Event]],
        stored: list[StoredEvent],
        duplicates: list[tuple[_Request, Event]],
    ) -> None:
        """ACCEPTED for the written events, DUPLICATE (of the group's first copy) for
        repeats within the group."""
        accepted = Status.ACCEPTED
        for (request, event), item in zip(fresh, stored, strict=True):
            # Positional (index, message_id, status, violations, profile_id, seq):
            # keywords cost ~0.4 us more per event.
            request.outcomes[event.index] = Outcome(
                event.index, event.message_id, accepted, (), item.profile_id, item.seq
            )
        by_message = {s.event.message_id: s for s in stored}
        for request, event in duplicates:
            original = by_message[event.message_id]
            request.outcomes[event.index] = Outcome(
                event.index,
                event.message_id,
                Status.DUPLICATE,
                seq=original.seq,
                profile_id=original.profile_id,
            )

    @staticmethod
    def _hot_update(
        workspace_id: str,
        graph: IdentityGraph,
        final: Callable[[int], int],
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
        # Identifiers only change where this batch linked one or merged profiles; the
        # hot state of every other profile already holds its ids (the catch-up and the
        # rebuild write full profiles), so they are not sent again.
        relinked = {final(pid) for pid in graph.new_links.values()}
        relinked.update(final(m.survivor_id) for m in graph.merges)
        profiles: list[HotProfile] = []
        seen: list[SeenProfile] = []
        for node in graph.nodes.values():
            target = final(node.profile_id)
            seen_us = last_seen.get(target)
            if seen_us is None:
                continue  # loaded for context, untouched by this batch
            change = changed.get(target)
            if change is None and target not in relinked:
                seen.append(SeenProfile(target, node.created_at_us, seen_us))
                continue
            sets, deletes = change or _NO_TRAIT_CHANGES
            ids: list[str] = []
            if target in relinked:
                ids = sorted(f"{t}:{v}" for t, values in node.ids.items() for v in values)
            profiles.append(
                HotProfile(
                    profile_id=target,
                    created_at_us=node.created_at_us,
                    last_seen_us=seen_us,
                    ids=ids,
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
        return HotUpdate(workspace_id, redirects, profiles, seen)

    @staticmethod
    async def _records(
        workspace_id: str,
        stored: list[StoredEvent],
        traces: list[tuple[str, ...]],
        merges: list[MergeRecord],
    ) -> list[StreamRecord]:
        """The group's stream records in stream order. Built while the group's
        statements are in flight: it yields to the loop every _YIELD_EVERY events so
        the writing task sends its next statement as soon as the last one is done."""
        records: list[StreamRecord] = []
        for start in range(0, len(stored), _YIELD_EVERY):
            await asyncio.sleep(0)
            end = start + _YIELD_EVERY
            records.extend(
                StreamRecord(  # positional: a NamedTuple's keywords cost more
                    s.seq,
                    0,
                    workspace_id,
                    "event",
                    s.profile_id,
                    stream_event(e, e.properties_json, e.traits_json, e.context_json),
                    0,
                    0,
                    trace,
                )
                for s, trace in zip(stored[start:end], traces[start:end], strict=True)
                for e in (s.event,)
            )
        if not merges:
            return records  # already in seq order
        trace_of = {s.seq: trace for s, trace in zip(stored, traces, strict=True)}
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
                    trace=trace_of[merge.event_seq],
                )
            )
        records.sort(key=lambda r: (r.seq, r.sub))
        return records
