"""One run of a sync: claim it, check the guardrail, deliver the changes since its
cursor (the audience's current members on the first run) and record the run.

Exactly-once bookkeeping: the cursor is written only after the destination
acknowledged the batch that reaches it, in the same UPDATE that checks this replica
still holds the sync's claim. A crash before that write re-sends the batch on the next
run under the same idempotency key (``<sync id>:<first seq>-<last seq>``), which the
destination uses to drop the repeat.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import aiohttp
import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from redis.asyncio import Redis
from redis.typing import KeyT, StreamIdT

from services.shared import change_traces, metrics, recommendation_lists, streams
from services.shared.clock import US_PER_DAY, Clock
from services.shared.errors import FailedPrecondition, NotFound
from services.shared.holdout import in_holdout
from services.shared.redis import is_cluster
from services.sync.delivery import DeliveryFailed, RetryPolicy, TokenBucket
from services.sync.destinations import TYPES
from services.sync.destinations.base import Batch, DestinationRun, RunContext
from services.sync.model import (
    ADDED,
    AUDIENCE,
    DEAD_LETTERED,
    EVENTS,
    FAILED,
    PAUSED,
    PERIOD_US,
    RECOMMENDATION,
    REMOVED,
    SET,
    SUCCEEDED,
    Change,
    DeadLetter,
    Destination,
    ForwardedEvent,
    Run,
    Sync,
    new_id,
)
from services.sync.readmodel import ChangeLog, LoggedChange
from services.sync.settings import SyncSettings
from services.sync.store import SyncStore
from services.sync.values import ValueReader, ValueRow

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
T = TypeVar("T")
# The one consumer name of every event sync's group (only the claim holder reads it).
EVENT_CONSUMER = "holder"


class SyncHeld(FailedPrecondition):
    """Another run (of this or another replica) holds the sync's claim."""


@dataclass
class _Pending:
    """Acknowledged-but-unwritten progress of a destination that acknowledges at the end."""

    cursor: int
    members_delta: int = 0
    members: dict[int, bool] = field(default_factory=dict)


class SyncRunner:
    """Runs syncs; one per process, shared by RunSync and the scheduler."""

    def __init__(
        self,
        store: SyncStore,
        changelog: ChangeLog,
        settings: SyncSettings,
        clock: Clock,
        values: ValueReader | None = None,
        redis: Redis | None = None,
    ) -> None:
        """`redis` (optional) holds the trace context of realtime changes
        (services/shared/change_traces.py): a delivery continues its changes' trace."""
        self._redis = redis
        self._store = store
        self._changelog = changelog
        self._values = values or ValueReader(changelog.engine)
        self._settings = settings
        self._clock = clock
        self._policy = RetryPolicy(
            settings.retry_base_seconds, settings.retry_max_seconds, settings.max_attempts
        )
        # Per destination, shared by every run of this process.
        self._buckets: dict[str, TokenBucket] = {}

    def _claim_until(self) -> int:
        return self._clock.now_us() + int(self._settings.claim_seconds * 1_000_000)

    async def run(self, ws: str, sync_id: str, only_if_due: bool = False) -> Run:
        """Run the sync now and return its record. FailedPrecondition when it is
        paused, its audience or destination is gone, or another replica holds it (or,
        with `only_if_due`, when it is no longer due: another replica just ran it)."""
        return await self._claimed(ws, sync_id, only_if_due, self._deliver)

    async def redrive(self, ws: str, sync_id: str, dead_letter_ids: Sequence[str]) -> Run:
        """Send the sync's dead letters (those named, or every one not yet re-driven)
        again, each under its original idempotency key; the cursor does not move. A
        letter the destination accepts is marked re-driven; one it refuses again stays,
        with the new response."""

        async def redeliver(sync: Sync, destination: Destination, _: int, run: Run) -> None:
            letters = await self._store.pending_dead_letters(ws, sync_id, dead_letter_ids)
            async with self._target(sync, destination, run) as target:
                for letter, payload in letters:
                    batch = replace(
                        Batch.from_json(payload), idempotency_key=letter.idempotency_key
                    )
                    outcome = await target.deliver(batch)
                    run.batches += 1
                    run.retries += outcome.retries
                    if outcome.delivered:
                        _count(run, batch)
                        await target.finish()
                        await self._store.redriven(letter.id, self._clock.now_us(), None, "")
                    else:
                        run.failed += len(batch)
                        await self._store.redriven(
                            letter.id, None, outcome.refused_status, outcome.refused_body
                        )
            run.status = SUCCEEDED if not run.failed else DEAD_LETTERED

        return await self._claimed(ws, sync_id, False, redeliver)

    async def _claimed(
        self,
        ws: str,
        sync_id: str,
        only_if_due: bool,
        work: Callable[[Sync, Destination, int, Run], Awaitable[None]],
    ) -> Run:
        """Claim the sync, do `work` as one recorded run, release the claim."""
        # Unique per run: two runs in one process exclude each other as well.
        holder = f"{self._settings.replica}/{secrets.token_hex(4)}"
        now = self._clock.now_us()
        # Claim first, then read: the cursor read is the one no other replica moves.
        if not await self._store.claim(
            ws, sync_id, holder, now, self._claim_until(), only_if_due=only_if_due
        ):
            if await self._store.get_sync(ws, sync_id) is None:
                raise NotFound(f"sync {sync_id} not found")
            raise SyncHeld(
                f"sync {sync_id} is being run by another replica"
                if not only_if_due
                else f"sync {sync_id} is not due or is being run by another replica"
            )
        try:
            await self._store.abandon_runs(sync_id, now)
            sync, destination, audience_id = await self._runnable(ws, sync_id)
            run = Run(
                id=new_id("run"),
                workspace_id=ws,
                sync_id=sync_id,
                from_cursor=sync.cursor,
                to_cursor=sync.cursor,
                started_at_us=now,
                holder=holder,
            )
            started = time.monotonic()
            try:
                await self._store.save_run(run)
                try:
                    await work(sync, destination, audience_id, run)
                except DeliveryFailed as error:
                    run.status, run.error = FAILED, str(error)
                    metrics.SYNC_FAILURES.labels("run_failed").inc()
            finally:
                run.finished_at_us = run.started_at_us + int((time.monotonic() - started) * 1e6)
                await self._store.save_run(run)
        finally:
            await self._store.release(sync_id, holder)
        return run

    @asynccontextmanager
    async def _target(
        self, sync: Sync, destination: Destination, run: Run
    ) -> AsyncIterator[DestinationRun]:
        """The run's destination, opened with HTTP plumbing; aborted on failure."""
        bucket = None
        if destination.rate_limit_per_second > 0:
            bucket = self._buckets.setdefault(
                destination.id, TokenBucket(destination.rate_limit_per_second)
            )
        async with aiohttp.ClientSession() as session:
            context = RunContext(
                run.id,
                sync.id,
                session,
                self._policy,
                bucket,
                sync.destination_state,
                lambda state: self._store.save_destination_state(sync.id, state),
                sync.source,
            )
            target = TYPES[destination.kind].open_run(destination, context)
            try:
                yield target
            except BaseException:
                await target.abort()
                raise

    async def _runnable(self, ws: str, sync_id: str) -> tuple[Sync, Destination, int]:
        """The claimed sync, its destination and audience id (0 for a value sync), or
        why it cannot run."""
        sync = await self._store.get_sync(ws, sync_id)
        if sync is None:
            raise NotFound(f"sync {sync_id} not found")
        if sync.paused:
            raise FailedPrecondition(
                f"sync {sync_id} is paused ({sync.paused_reason or 'by an operator'}); "
                "resume it with UpdateSync paused=false"
            )
        destination = await self._store.get_destination(ws, sync.destination_id)
        if destination is None:
            raise FailedPrecondition(f"destination {sync.destination_id} no longer exists")
        if sync.source == EVENTS:
            audience = 0
            if sync.source_key:
                found = await self._changelog.audience_id(ws, sync.source_key)
                if found is None:
                    raise FailedPrecondition(f"audience {sync.source_key} does not exist")
                audience = found
            return sync, destination, audience
        if sync.source != AUDIENCE:
            if not await self._values.exists(ws, sync.source, sync.source_key):
                raise FailedPrecondition(f"{sync.source} {sync.source_key} does not exist")
            return sync, destination, 0
        audience_id = await self._changelog.audience_id(ws, sync.source_key)
        if audience_id is None:
            raise FailedPrecondition(f"audience {sync.source_key} does not exist")
        return sync, destination, audience_id

    async def _deliver(
        self, sync: Sync, destination: Destination, audience_id: int, run: Run
    ) -> None:
        async with self._target(sync, destination, run) as target:
            if sync.source == EVENTS:
                await self._stream_events(sync, destination, audience_id, target, run)
            elif sync.source == RECOMMENDATION:
                await self._new_lists(sync, destination, target, run)
            elif sync.source != AUDIENCE:
                await self._new_values(sync, destination, target, run)
            elif not sync.backfilled:
                await self._backfill(sync, destination, audience_id, target, run)
            else:
                upto = await self._changelog.last_seq(sync.workspace_id)
                if await self._guardrail_trips(sync, audience_id, upto, run):
                    await target.abort()
                    return
                await self._deltas(sync, destination, audience_id, upto, target, run)
        run.status = DEAD_LETTERED if run.dead_letters else SUCCEEDED
        values: dict[str, object] = {"removal_approved": False}
        if sync.cadence in PERIOD_US:
            values["next_run_at_us"] = run.started_at_us + PERIOD_US[sync.cadence]
        await self._store.update_sync(sync.workspace_id, sync.id, values, self._clock.now_us())

    async def _stream_events(
        self,
        sync: Sync,
        destination: Destination,
        audience_id: int,
        target: DestinationRun,
        run: Run,
    ) -> None:
        """Forward the new entries of every event stream shard that pass the sync's
        filter, batch by batch, each shard in stream order (a profile's events are all
        on one shard, so in order per profile), for up to events_run_seconds.

        The sync's own consumer group on each shard holds its position there; one
        consumer name, read only by the replica holding the sync's claim, so a new
        holder first re-reads, shard by shard, what an earlier one read but did not
        acknowledge (same entries, same batches, same idempotency keys): that is how a
        dead replica's pending entries are taken over. Entries are acknowledged (XACK)
        after the destination acknowledged them and the cursor (the highest seq
        forwarded on any shard) was written. The first run creates the group on every
        shard at that shard's end: forwarding starts then."""
        if self._redis is None:
            raise DeliveryFailed("event syncs need Redis")
        redis, shards = self._redis, self._settings.events_streams
        group = event_group(sync.id)
        if not sync.backfilled:
            begin = 0
            for stream in shards:
                top = await redis.xrevrange(stream, count=1)
                start = _entry_id(top[0][0] or "0-0") if top else "0-0"
                await streams.ensure_group(redis, stream, group, start)
                begin = max(begin, _seq(start))
            await self._acknowledge(run, begin, 0)
            run.to_cursor = begin
            return
        for stream in shards:
            await streams.ensure_group(redis, stream, group, "$")
        deadline = time.monotonic() + self._settings.events_run_seconds
        shard = _ShardRead(sync, target, run, audience_id or None, len(shards) > 1)
        # What an earlier holder left pending, per shard from after the last entry read
        # (entries of a destination that acknowledges at the end stay pending until then).
        after = dict.fromkeys(shards, "0")
        while after and time.monotonic() < deadline:
            read = await self._read_shards(group, after, destination.batch_size)
            for stream in list(after):
                entries = read.get(stream)
                if not entries:
                    del after[stream]
                    continue
                await self._forward_shard(shard, stream, group, entries)
                after[stream] = entries[-1][0]
        # Then the new entries of every shard, one XREADGROUP for all.
        while time.monotonic() < deadline:
            read = await self._read_shards(
                group, dict.fromkeys(shards, ">"), destination.batch_size
            )
            if not read:
                break
            for stream, entries in read.items():
                await self._forward_shard(shard, stream, group, entries)
        await target.finish()
        if not target.acknowledges_each_batch:
            await self._acknowledge(run, shard.cursor, 0)
            for stream, ids in shard.unacked.items():
                await streams.ack(redis, stream, group, ids)
        run.to_cursor = shard.cursor

    async def _read_shards(
        self, group: str, positions: Mapping[str, str], count: int
    ) -> dict[str, list[tuple[str, dict[bytes, bytes] | None]]]:
        """One XREADGROUP of the sync's consumer on these shards from these positions:
        per shard with entries, up to `count` (id, fields or None when trimmed)."""
        assert self._redis is not None
        redis = self._redis
        # On a Redis Cluster the shards' streams are on different slots: one read each.
        groups = (
            [{stream: position} for stream, position in positions.items()]
            if is_cluster(redis)
            else [dict(positions)]
        )
        out: dict[str, list[tuple[str, dict[bytes, bytes] | None]]] = {}
        for group_positions in groups:
            # RESP2: [[stream, [(id, fields or None), ...]], ...].
            reply = cast(
                "list[Any]",
                await redis.xreadgroup(
                    group,
                    EVENT_CONSUMER,
                    cast("dict[KeyT, StreamIdT]", group_positions),
                    count=count,
                ),
            )
            for name, entries in reply or []:
                if entries:
                    out[_entry_id(name)] = [(_entry_id(i), f) for i, f in entries]
        return out

    async def _forward_shard(
        self,
        shard: _ShardRead,
        stream: str,
        group: str,
        entries: list[tuple[str, dict[bytes, bytes] | None]],
    ) -> None:
        """Deliver one shard's entries as one batch; acknowledge them on the shard after
        the destination did (or, for a destination that acknowledges at the end, keep
        them for then)."""
        assert self._redis is not None
        sync, run, target = shard.sync, shard.run, shard.target
        events = await self._forwardable(sync, entries, shard.audience_id, run)
        if events:
            key = f"{sync.id}:e{entries[0][0]}-{entries[-1][0]}"
            if shard.sharded:  # a merge entry is on two shards under one id
                key += f"@{stream}"
            batch = Batch(sync.id, "", sync.id_type, key, [], EVENTS, events)
            await self._deliver_batch(sync, target, batch, run)
        shard.cursor = max(shard.cursor, *(_seq(entry_id) for entry_id, _ in entries))
        ids = [entry_id for entry_id, _ in entries]
        if target.acknowledges_each_batch:
            await self._acknowledge(run, shard.cursor, 0)
            await streams.ack(self._redis, stream, group, ids)
        else:
            shard.unacked.setdefault(stream, []).extend(ids)
            await self._renew(run)

    async def _forwardable(
        self,
        sync: Sync,
        entries: list[tuple[str, dict[bytes, bytes] | None]],
        audience_id: int | None,
        run: Run,
    ) -> list[ForwardedEvent]:
        """The entries' events that pass the sync's filter, named by its id type; the
        others are dropped (events of people without the id type count as skipped)."""
        picked: list[tuple[int, int, dict[str, Any]]] = []
        for entry_id, fields in entries:
            if not fields or fields.get(b"kind") != b"event":
                continue  # a merge, or an entry trimmed away while pending
            if fields.get(b"workspace_id", b"").decode() != sync.workspace_id:
                continue
            event = orjson.loads(fields.get(b"event", b"null")) or {}
            if sync.event_types and event.get("type") not in sync.event_types:
                continue
            if sync.event_names and event.get("name") not in sync.event_names:
                continue
            picked.append((int(entry_id.split("-")[0]), int(fields[b"profile_id"]), event))
        if not picked:
            return []
        people, ids, members = await self._changelog.name_profiles(
            sync.workspace_id, [pid for _, pid, _ in picked], sync.id_type, audience_id
        )
        out = []
        for seq, pid, event in picked:
            person = people.get(pid)
            if person is None or (members is not None and person not in members):
                continue  # erased, or not in the sync's audience
            own = event.get(sync.id_type) if sync.id_type in ("user_id", "anonymous_id") else None
            value = own or ids.get(person)
            if not value:
                run.skipped += 1
                continue
            out.append(
                ForwardedEvent(
                    seq=seq,
                    message_id=str(event.get("message_id") or ""),
                    type=str(event.get("type") or ""),
                    name=event.get("name"),
                    profile_id=person,
                    id=str(value),
                    timestamp_us=int(event.get("timestamp_us") or 0),
                    properties=event.get("properties"),
                    traits=event.get("traits"),
                )
            )
        return out

    async def _new_values(
        self, sync: Sync, destination: Destination, target: DestinationRun, run: Run
    ) -> None:
        """Deliver the values computed since the cursor (every current value on the
        first run), in (computed-at, profile id) order, batch by batch. Only values
        computed at least `value_settle_seconds` ago are read: a computation commits
        after the instant it stamps on its values, and the cursor must not pass an
        instant whose values are not all committed yet."""
        now = self._clock.now_us()
        upto = now - int(self._settings.value_settle_seconds * 1_000_000)
        since = now - sync.active_within_days * US_PER_DAY if sync.active_within_days else None
        cursor = (sync.cursor, sync.cursor_profile_id)
        pending = cursor
        async with self._values.stream(
            sync.workspace_id, sync.source, sync.source_key, cursor, upto
        ) as rows:
            async for chunk in _chunks(rows, destination.batch_size):
                named = await self._values.name(sync.workspace_id, chunk, sync.id_type, since)
                changes = []
                for v in named:
                    if v.id_value is None or not v.active:
                        run.skipped += 1
                    else:
                        changes.append(
                            Change(v.row.at_us, SET, v.person, v.id_value, v.row.at_us, v.row.value)
                        )
                first, last = chunk[0], chunk[-1]
                if changes:
                    key = (
                        f"{sync.id}:v{first.at_us}.{first.profile_id}"
                        f"-{last.at_us}.{last.profile_id}"
                    )
                    await self._send(sync, target, key, changes, run)
                pending = (last.at_us, last.profile_id)
                if target.acknowledges_each_batch:
                    await self._acknowledge(run, pending[0], 0, pending[1])
                else:
                    await self._renew(run)
        await target.finish()
        if not target.acknowledges_each_batch:
            await self._acknowledge(run, pending[0], 0, pending[1])
        run.to_cursor = pending[0]

    async def _new_lists(
        self, sync: Sync, destination: Destination, target: DestinationRun, run: Run
    ) -> None:
        """Deliver each profile's top-N item ids of the recommendation object whose list
        differs from the one the destination last acknowledged for it (every list on
        the first run), batch by batch.

        The lists are read from the database's read model, which training replaces
        per object in one transaction (services/shared/recommendation_lists.py), so a
        run reads one training's lists and never scans the hot state; what each
        profile was sent is kept
        as a digest per (sync, profile), written after the destination acknowledged the
        batch (or refused it: it is then a dead letter), under the run's claim. A batch's
        idempotency key is a digest of its (profile, list) pairs, so a batch re-sent
        after a crash before that write carries the key it was first sent with."""
        now = run.started_at_us
        since = now - sync.active_within_days * US_PER_DAY if sync.active_within_days else None
        held: dict[int, str] = {}  # sent, to remember after `finish` (files)
        seen: set[int] = set()
        async for page in recommendation_lists.lists_of(
            self._changelog.engine, sync.workspace_id, sync.source_key, destination.batch_size
        ):
            rows = [ValueRow(now, pid, _items(items, sync.item_metadata)) for pid, items in page]
            seen.update(r.profile_id for r in rows)
            await self._send_lists(sync, target, run, rows, since, held)
        # A list that is gone (the profile has no items any more) is sent as an empty
        # list, once; a profile that cannot be named any more (erased) is forgotten.
        # No list at all is an object without results (never trained, or every list
        # empty), not a reason to clear every profile's attribute.
        emptied = [
            ValueRow(now, pid, [])
            for pid, digest in sorted((await self._store.sent_digests(sync.id, None)).items())
            if seen and pid not in seen and digest != _EMPTY
        ]
        for start in range(0, len(emptied), destination.batch_size):
            chunk = emptied[start : start + destination.batch_size]
            await self._send_lists(sync, target, run, chunk, since, held, forget_unnamed=True)
        await target.finish()
        await self._remember(run, held)
        await self._acknowledge(run, now, 0)
        run.to_cursor = now

    async def _send_lists(
        self,
        sync: Sync,
        target: DestinationRun,
        run: Run,
        rows: list[ValueRow],
        since: int | None,
        held: dict[int, str],
        forget_unnamed: bool = False,
    ) -> None:
        """Send the rows whose list differs from the one last sent, as one batch."""
        digests = {r.profile_id: _digest(r.value) for r in rows}
        sent = await self._store.sent_digests(sync.id, list(digests))
        changed = [r for r in rows if sent.get(r.profile_id) != digests[r.profile_id]]
        if not changed:
            await self._renew(run)
            return
        named = await self._values.name(sync.workspace_id, changed, sync.id_type, since)
        changes: list[Change] = []
        delivered: dict[int, str] = {}
        for v in named:
            if v.id_value is None or not v.active:
                run.skipped += 1
                if forget_unnamed:
                    delivered[v.row.profile_id] = _EMPTY
                continue
            changes.append(Change(v.row.at_us, SET, v.person, v.id_value, v.row.at_us, v.row.value))
            delivered[v.row.profile_id] = digests[v.row.profile_id]
        if changes:
            content = ",".join(f"{pid}:{d}" for pid, d in delivered.items())
            await self._send(sync, target, f"{sync.id}:r{_digest(content)}", changes, run)
        if target.acknowledges_each_batch:
            await self._remember(run, delivered)
        else:
            held.update(delivered)
            await self._renew(run)

    async def _remember(self, run: Run, digests: dict[int, str]) -> None:
        if not await self._store.record_sent(
            run.sync_id, run.holder, digests, self._clock.now_us()
        ):
            raise DeliveryFailed(f"sync {run.sync_id}: this replica lost its claim mid-run")

    async def _guardrail_trips(self, sync: Sync, audience_id: int, upto: int, run: Run) -> bool:
        """Pause the sync instead of removing more than its share of the destination's
        members (unless an operator approved it by resuming)."""
        if sync.removal_approved or sync.delivered_members <= 0:
            return False
        held = await self._held_out(sync, audience_id)
        if sync.active_within_days:
            # Only the people the destination holds from this sync are removed (those
            # skipped as inactive, or held out, were never sent).
            leaving = await self._changelog.exiting_persons(
                sync.workspace_id, audience_id, sync.cursor, upto
            )
            holds = await self._store.held_members(sync.id, sync.workspace_id, set(leaving))
            exits = sum(1 for person in leaving if person in holds)
        elif sync.exclude_holdout:
            # Held-out members were never delivered: their exits remove nothing.
            leaving = await self._changelog.exiting_persons(
                sync.workspace_id, audience_id, sync.cursor, upto
            )
            exits = sum(1 for person in leaving if not held(person))
        else:
            exits = await self._changelog.count_exits(
                sync.workspace_id, audience_id, sync.cursor, upto
            )
        limit = sync.max_removal_fraction * sync.delivered_members
        if exits <= limit:
            return False
        reason = (
            f"size guardrail: this run would remove {exits} of the {sync.delivered_members} "
            f"members the destination holds (more than {sync.max_removal_fraction:.0%}); "
            "resume the sync to deliver the removals"
        )
        await self._store.update_sync(
            sync.workspace_id,
            sync.id,
            {"paused": True, "paused_reason": reason},
            self._clock.now_us(),
        )
        run.status, run.error = PAUSED, reason
        log.warning("sync %s paused by the size guardrail: %d removals", sync.id, exits)
        return True

    async def _backfill(
        self,
        sync: Sync,
        destination: Destination,
        audience_id: int,
        target: DestinationRun,
        run: Run,
    ) -> None:
        """Deliver the audience's members as of one snapshot, then set the cursor to the
        snapshot's last seq: later runs deliver exactly the changes after it."""
        held = await self._held_out(sync, audience_id)
        since = _active_since(sync, run)
        sent: dict[int, bool] = {}  # with the activity filter: the persons sent
        async with self._changelog.member_snapshot(
            sync.workspace_id, audience_id, sync.id_type
        ) as (last, members):
            index = 0
            async for chunk in _chunks(members, destination.batch_size):
                named = {person for person, value in chunk if value is not None}
                active = (
                    named
                    if since is None
                    else await self._changelog.active_persons(sync.workspace_id, named, since)
                )
                changes = []
                for person, value in chunk:
                    if value is None or held(person) or person not in active:
                        run.skipped += 1
                    else:
                        changes.append(Change(last, ADDED, person, value, run.started_at_us))
                if changes:
                    key = f"{sync.id}:backfill@{last}:{index}"
                    await self._send(sync, target, key, changes, run)
                    index += 1
                if since is None:
                    await self._renew(run)
                    continue
                # Remembered once acknowledged (or dead-lettered: re-drivable), so
                # their exits are sent later and the others' are not.
                batch = dict.fromkeys((c.profile_id for c in changes), True)
                if target.acknowledges_each_batch:
                    await self._remember_members(run, sync, batch)
                else:
                    sent.update(batch)
                await self._renew(run)
        await target.finish()
        await self._acknowledge(run, last, run.added - run.removed, members=(sync, sent))
        run.to_cursor = last

    async def _deltas(
        self,
        sync: Sync,
        destination: Destination,
        audience_id: int,
        upto: int,
        target: DestinationRun,
        run: Run,
    ) -> None:
        """Deliver the changes in (cursor, upto] in seq order, batch by batch."""
        cursor = sync.cursor
        pending = _Pending(cursor)
        held = await self._held_out(sync, audience_id)
        since = _active_since(sync, run)
        holds: dict[int, bool] = {}  # with the activity filter: persons held, as of now
        while True:
            logged = await self._changelog.changes(
                sync.workspace_id, audience_id, sync.id_type, cursor, upto, destination.batch_size
            )
            if not logged:
                break
            members: dict[int, bool] = {}
            if since is None:
                changes = self._named(logged, run, held)
            else:
                changes, members = await self._filtered(sync, logged, run, held, since, holds)
            delta = 0
            if changes:
                key = f"{sync.id}:{logged[0].seq}-{logged[-1].seq}"
                before = run.added - run.removed
                await self._send(sync, target, key, changes, run)
                delta = run.added - run.removed - before
            cursor = logged[-1].seq
            if target.acknowledges_each_batch:
                await self._acknowledge(run, cursor, delta, members=(sync, members))
            else:
                pending.cursor, pending.members_delta = cursor, pending.members_delta + delta
                pending.members.update(members)
                await self._renew(run)
        await target.finish()
        if not target.acknowledges_each_batch:
            await self._acknowledge(
                run, pending.cursor, pending.members_delta, members=(sync, pending.members)
            )
        run.to_cursor = cursor

    async def _filtered(
        self,
        sync: Sync,
        logged: list[LoggedChange],
        run: Run,
        held: Callable[[int], bool],
        since: int,
        holds: dict[int, bool],
    ) -> tuple[list[Change], dict[int, bool]]:
        """The changes an audience sync with the activity filter sends, and what the
        destination holds after them (person -> held). An entry is sent when the person
        has an event since `since` (or is held already); an exit only when the
        destination holds the person (an inactive entrant was never sent). `holds`
        carries the run's own changes from batch to batch (a destination that
        acknowledges at the end has not had them written yet)."""
        ws = sync.workspace_id
        unknown = {c.person for c in logged} - holds.keys()
        stored = await self._store.held_members(sync.id, ws, unknown)
        holds.update({person: person in stored for person in unknown})
        entering = {c.person for c in logged if c.entered and not holds[c.person]}
        active = await self._changelog.active_persons(ws, entering, since)
        out: list[Change] = []
        members: dict[int, bool] = {}
        for c in logged:
            if c.id_value is None or held(c.person):
                run.skipped += 1
            elif c.entered and (holds[c.person] or c.person in active):
                out.append(Change(c.seq, ADDED, c.person, c.id_value, c.at_us))
                holds[c.person] = members[c.person] = True
            elif not c.entered and holds[c.person]:
                out.append(Change(c.seq, REMOVED, c.person, c.id_value, c.at_us))
                holds[c.person] = members[c.person] = False
            else:  # an inactive entrant, or the exit of someone never sent
                run.skipped += 1
        return out, members

    async def _held_out(self, sync: Sync, audience_id: int) -> Callable[[int], bool]:
        """Whether a person is left out as one of the audience's holdout (control)
        members: never without `exclude_holdout`; with it, by the share read at the
        start of the run (the same hash the profile service flags them by)."""
        share = (
            await self._changelog.holdout_share(sync.workspace_id, audience_id)
            if sync.exclude_holdout
            else 0.0
        )
        if share <= 0:
            return lambda _person: False
        return lambda person: in_holdout(sync.source_key, person, share)

    @staticmethod
    def _named(logged: list[LoggedChange], run: Run, held: Callable[[int], bool]) -> list[Change]:
        out = []
        for c in logged:
            if c.id_value is None or held(c.person):
                run.skipped += 1
            else:
                out.append(
                    Change(c.seq, ADDED if c.entered else REMOVED, c.person, c.id_value, c.at_us)
                )
        return out

    async def _send(
        self, sync: Sync, target: DestinationRun, key: str, changes: list[Change], run: Run
    ) -> None:
        """Deliver one batch of changes (see `_deliver_batch`)."""
        batch = Batch(sync.id, sync.source_key, sync.id_type, key, changes, sync.source)
        await self._deliver_batch(sync, target, batch, run)

    async def _deliver_batch(
        self, sync: Sync, target: DestinationRun, batch: Batch, run: Run
    ) -> None:
        """Deliver one batch; count it, or dead-letter it when the destination refused."""
        parent: Context | None = None
        links: list[trace.Link] = []
        if self._redis is not None and batch.changes:
            seqs = [c.seq for c in batch.changes]
            parent, links = await change_traces.recall(self._redis, sync.workspace_id, seqs)
            caller = trace.get_current_span().get_span_context()
            if parent is not None and caller.is_valid:
                links.append(trace.Link(caller))  # the run (RunSync, the scheduler)
        with _tracer.start_as_current_span(
            "sync.deliver",
            context=parent,
            links=links,
            attributes={"audiences.sync_id": sync.id, "audiences.changes": len(batch)},
        ) as span:
            outcome = await target.deliver(batch)
            if not outcome.delivered:
                span.set_attribute("audiences.refused_status", outcome.refused_status or 0)
                metrics.SYNC_FAILURES.labels("refused").inc()
        run.batches += 1
        run.retries += outcome.retries
        if outcome.delivered:
            _count(run, batch)
            return
        first, last = batch.seqs
        letter = DeadLetter(
            id=new_id("dlq"),
            idempotency_key=batch.idempotency_key,
            first_seq=first,
            last_seq=last,
            status_code=outcome.refused_status or 0,
            response_body=outcome.refused_body,
            changes=len(batch),
            created_at_us=self._clock.now_us(),
        )
        run.failed += len(batch)
        run.dead_letters.append(letter)
        await self._store.add_dead_letter(run, letter, batch.as_json())
        log.warning(
            "sync %s: batch %s refused with HTTP %d; dead-lettered",
            sync.id,
            batch.idempotency_key,
            letter.status_code,
        )

    async def _acknowledge(
        self,
        run: Run,
        cursor: int,
        delta: int,
        cursor_pid: int = 0,
        members: tuple[Sync, Mapping[int, bool]] | None = None,
    ) -> None:
        """Write the cursor (and, `members`, which persons the sync's destination holds
        now: audience syncs with the activity filter) under the run's claim."""
        held = (members[0].workspace_id, members[1]) if members and members[1] else None
        if not await self._store.acknowledge(
            run.sync_id,
            run.holder,
            cursor,
            delta,
            self._claim_until(),
            backfilled=True,
            cursor_profile_id=cursor_pid,
            members=held,
            now_us=self._clock.now_us(),
        ):
            raise DeliveryFailed(f"sync {run.sync_id}: this replica lost its claim mid-run")

    async def _remember_members(self, run: Run, sync: Sync, members: Mapping[int, bool]) -> None:
        if not await self._store.record_members(
            run.sync_id, run.holder, sync.workspace_id, members, self._clock.now_us()
        ):
            raise DeliveryFailed(f"sync {run.sync_id}: this replica lost its claim mid-run")

    async def _renew(self, run: Run) -> None:
        if not await self._store.renew(run.sync_id, run.holder, self._claim_until()):
            raise DeliveryFailed(f"sync {run.sync_id}: this replica lost its claim mid-run")


def event_group(sync_id: str) -> str:
    """The consumer group of an event sync on every event stream shard."""
    return f"sync-events:{sync_id}"


@dataclass
class _ShardRead:
    """One event sync run's state across its shards."""

    sync: Sync
    target: DestinationRun
    run: Run
    audience_id: int | None
    sharded: bool
    cursor: int = 0
    unacked: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cursor = self.sync.cursor


def _entry_id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _seq(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def _digest(value: object) -> str:
    """32 hex digits naming a value (a list of item ids, a batch's content)."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


_EMPTY = _digest([])


def _items(items: list[dict[str, Any]], metadata: bool) -> list[Any]:
    """What a recommendation sync sends of a profile's items: their ids, or each id
    with its metadata (an object; training keeps it as JSON text)."""
    if not metadata:
        return [item["item_id"] for item in items]
    return [
        {"item_id": item["item_id"], "metadata": orjson.loads(item.get("metadata") or "{}")}
        for item in items
    ]


def _active_since(sync: Sync, run: Run) -> int | None:
    """The activity filter's start (events at or after it count), or None when off."""
    if not sync.active_within_days:
        return None
    return run.started_at_us - sync.active_within_days * US_PER_DAY


def _count(run: Run, batch: Batch) -> None:
    # A value sync's values and an event sync's events count as added.
    run.added += len(batch.events) + sum(1 for c in batch.changes if c.action in (ADDED, SET))
    run.removed += sum(1 for c in batch.changes if c.action == REMOVED)


async def _chunks(rows: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    chunk: list[T] = []
    async for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
