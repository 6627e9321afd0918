"""The realtime worker's loop: read the event shards in batches, re-evaluate the touched
profiles, publish what changed, acknowledge; and re-evaluate profiles as their window
boundaries fall due.

Delivery: entries are acknowledged only after their re-evaluation committed, so a
worker that dies leaves them pending and another worker takes them over (XAUTOCLAIM,
at start and every ``claim_every_seconds``). Re-evaluating a profile is idempotent (the
writer diffs against committed memberships under the workspace's lock), so a
redelivered entry changes nothing that was already written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from opentelemetry.trace import Span
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.segmentation.hot import HotState
from services.segmentation.realtime import tracing
from services.segmentation.realtime.changes import ChangesPublisher
from services.segmentation.realtime.schedule import EventKind
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.realtime.store import Evaluated, LoggedChange, RealtimeStore
from services.segmentation.realtime.touches import Touched, touched_profiles
from services.shared import change_traces, streams
from services.shared.clock import Clock
from services.shared.streams import StreamEntry

log = logging.getLogger(__name__)

# Take (and remove) the members of the due set whose instant has come: KEYS[1] the
# set, ARGV[1] now (us), ARGV[2] how many. Atomic, so two workers never both take one.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


def due_member(ws: str, profile_id: int) -> str:
    """The due set's member naming a profile of a workspace."""
    return f"{ws}:{profile_id}"


def _parse_due(member: bytes) -> tuple[str, int] | None:
    ws, _, pid = member.decode().rpartition(":")
    return (ws, int(pid)) if ws and pid.isdigit() else None


async def read_backlog(
    redis: Redis,
    shards: Sequence[str],
    group: str,
    consumer: str,
    batch_size: int,
    max_batch: int,
    block_ms: int | None,
) -> list[tuple[str, StreamEntry]]:
    """One batch of new entries: a read of `batch_size` per shard (waiting up to
    `block_ms`), then, while entries keep coming, more reads that do not wait, up to
    `max_batch` in all. A batch's evaluation costs little more for more profiles (one
    scoped statement per layer), so under a backlog the batch grows and the fixed cost
    is shared by more events; at low rates the first read returns what there is and
    latency stays that of one small batch."""
    read = await streams.read_groups(redis, shards, group, consumer, batch_size, block_ms)
    last = len(read)
    while last and len(read) < max_batch:
        more = await streams.read_groups(
            redis, shards, group, consumer, min(batch_size, max_batch - len(read)), None
        )
        read += more
        last = len(more)
    return read


class RealtimeWorker:
    """One consumer of the event shards (settings.streams) in the consumer group."""

    def __init__(
        self,
        redis: Redis,
        store: RealtimeStore,
        hot: HotState,
        clock: Clock,
        settings: RealtimeSettings,
    ) -> None:
        self._redis = redis
        self._store = store
        self._hot = hot
        self._clock = clock
        self._settings = settings
        self._take_due = redis.register_script(_TAKE_DUE)
        self.changes = ChangesPublisher(
            redis,
            store,
            settings.changes_stream,
            settings.changes_maxlen,
            settings.changes_cursor_key,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished (written and
        acknowledged) before returning."""
        s = self._settings
        for stream in s.streams:
            await streams.ensure_group(self._redis, stream, s.group)
        claimed_at = float("-inf")
        while not stop.is_set():
            if time.monotonic() - claimed_at >= s.claim_every_seconds:
                await self.claim_stale()
                await self.handover_all()
                # Records committed but not appended to the changes stream (a worker
                # died between the two; a batch writer's records) are appended now.
                await self.changes.catch_up_all()
                claimed_at = time.monotonic()
            await self.run_due()
            try:
                read = await read_backlog(
                    self._redis,
                    s.streams,
                    s.group,
                    s.consumer,
                    s.batch_size,
                    s.max_batch,
                    s.block_ms,
                )
            except ResponseError as error:
                if not streams.group_gone(error):
                    raise
                # The stream went with its group (a Redis restart without persistence,
                # an operator's flush): what ingest appends from now on is read again.
                log.warning("consumer group %s is gone (%s); creating it again", s.group, error)
                for stream in s.streams:
                    await streams.ensure_group(self._redis, stream, s.group)
                continue
            if read:
                await self.process(read)

    async def claim_stale(self) -> int:
        """Take over and process every entry of the shards left pending by another
        consumer for longer than claim_idle_ms; returns how many."""
        s = self._settings
        total = 0
        for stream in s.streams:
            cursor = "0-0"
            while True:
                cursor, entries = await streams.claim_stale_page(
                    self._redis, stream, s.group, s.consumer, s.claim_idle_ms, cursor, s.batch_size
                )
                if entries:
                    log.info("took over %d pending entries of %s", len(entries), stream)
                    await self.process([(stream, e) for e in entries])
                    total += len(entries)
                if cursor == "0-0":
                    break
        return total

    async def process(self, read: Sequence[tuple[str, StreamEntry]]) -> None:
        """Re-evaluate the profiles the entries touched, then acknowledge them, except
        those of a workspace whose evaluation failed: they stay pending and are taken
        over again once idle for claim_idle_ms (by this worker or another)."""
        touched = touched_profiles(entry for _, entry in read)
        failed = await self._evaluate(touched, self._clock.now_us())
        by_stream: dict[str, list[str]] = {}
        for stream, entry in read:
            if entry.fields.get(b"workspace_id", b"").decode() not in failed:
                by_stream.setdefault(stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            await streams.ack(self._redis, stream, self._settings.group, ids)

    async def run_due(self) -> int:
        """Re-evaluate the profiles whose next boundary is at or before now; returns
        how many were due."""
        now = self._clock.now_us()
        taken = await self._take_due(
            keys=[self._settings.due_key], args=[now, self._settings.batch_size]
        )
        touched: dict[str, Touched] = {}
        for member in taken:
            parsed = _parse_due(member)
            if parsed is not None:
                touched.setdefault(parsed[0], Touched()).add(parsed[1], {})
        failed = await self._evaluate(touched, now) if touched else set()
        # A failed workspace's due profiles go back, due now: retried next round.
        for ws in failed:
            await self._schedule(ws, dict.fromkeys(touched[ws].profiles, now))
        return len(taken)

    async def _evaluate(self, touched: Mapping[str, Touched], now: int) -> set[str]:
        """Re-evaluate each workspace's touched profiles; returns the workspaces whose
        evaluation failed (logged; one workspace's failure does not stop the others)."""
        failed: set[str] = set()
        for ws, profiles in touched.items():
            try:
                await self._evaluate_workspace(ws, profiles, now)
            except Exception:
                log.exception("realtime evaluation of workspace %s failed; will retry", ws)
                failed.add(ws)
        return failed

    async def _evaluate_workspace(self, ws: str, profiles: Touched, now: int) -> None:
        definitions = await self._store.definitions(ws)
        if definitions is None:
            return
        canonical = await self._store.canonical(ws, profiles.profiles.keys())
        traces: dict[int, dict[str, str]] = {}
        for pid, trace in profiles.profiles.items():
            if pid in canonical:
                traces[canonical[pid]] = trace
        scope = sorted(traces)
        if not scope:
            return
        if definitions.waiting:
            # A definition backfills: its backfill may have read these profiles before
            # this event; the handover re-evaluates them once it is live.
            await self._redis.sadd(self._pending_key(ws), *scope)
        if not definitions.layers and not definitions.computed and not definitions.accounts:
            return
        with tracing.evaluation(ws, traces) as span:
            evaluated = await self._store.evaluate(ws, definitions, scope, now, traces)
            # After the commit: hot state and the changes stream never show a change whose
            # record is not committed.
            await self._publish(ws, evaluated, traces, now, span)
        due = await self._store.next_due(ws, definitions.offsets, scope, now)
        await self._schedule(ws, due)

    def _pending_key(self, ws: str) -> str:
        return f"{self._settings.handover_key}:pending:{ws}"

    def _served_key(self, ws: str) -> str:
        return f"{self._settings.handover_key}:served:{ws}"

    async def handover_all(self) -> int:
        """Hand every workspace's newly servable realtime definitions over to per-event
        evaluation (see `handover`); returns how many were handed over."""
        total = 0
        for ws in await self._store.realtime_workspaces():
            try:
                total += await self.handover(ws)
            except Exception:
                log.exception("realtime handover of workspace %s failed; will retry", ws)
        return total

    async def handover(self, ws: str) -> int:
        """Take over the realtime definitions of `ws` that became servable since the
        last handover (created, or a new version whose backfill went live): re-evaluate
        the profiles evaluated while they backfilled (an event the backfill may not have
        seen; the writer's diff makes a re-evaluation of what it did see write nothing),
        and schedule every profile's next boundary of those definitions (the backfill's
        members must also leave when their windows run out). Returns how many."""
        definitions = await self._store.definitions(ws)
        current = definitions.served if definitions is not None else {}
        raw = await self._redis.hgetall(self._served_key(ws))
        served = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        new = {m: (v, offsets) for m, (v, offsets) in current.items() if served.get(m) != v}
        if new:
            now = self._clock.now_us()
            pending = [int(p) for p in await self._redis.smembers(self._pending_key(ws))]
            if pending:
                touched = Touched()
                for pid in pending:
                    touched.add(pid, {})
                if await self._evaluate({ws: touched}, now):
                    return 0  # logged; retried at the next handover round
            offsets: dict[EventKind, set[int]] = {}
            for _, kinds in new.values():
                for kind, more in kinds.items():
                    offsets.setdefault(kind, set()).update(more)
            await self._schedule(ws, await self._store.next_due(ws, offsets, None, now))
            await self._redis.hset(
                self._served_key(ws), mapping={m: v for m, (v, _) in new.items()}
            )
            log.info(
                "realtime handover in %s: %s (%d profiles re-evaluated)",
                ws,
                sorted(new),
                len(pending),
            )
        gone = served.keys() - current.keys()
        if gone:
            await self._redis.hdel(self._served_key(ws), *sorted(gone))
        if definitions is None or not definitions.waiting:
            await self._redis.delete(self._pending_key(ws))
        return len(new)

    async def _publish(
        self,
        ws: str,
        evaluated: Evaluated,
        traces: Mapping[int, dict[str, str]],
        now: int,
        span: Span | None = None,
    ) -> None:
        for audience, diff in evaluated.memberships:
            if audience.account_level:
                continue  # accounts have no hot state: the profile service serves people
            await self._hot.memberships(
                ws, audience.key, dict.fromkeys(diff.entered, now), diff.exited
            )
        for key, (changed, removed) in evaluated.computed.items():
            await self._hot.computed(ws, key, changed, removed)
        if not evaluated.changes:
            return
        records: list[LoggedChange] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for change in evaluated.changes:
                # The causing event's traceparent, tracestate (the change's own span's
                # while tracing records: realtime/tracing.py).
                event = traces.get(change.profile_id, {})
                fields = tracing.change_fields(span, change, event)
                records.append(LoggedChange(change, dict(fields)))
                change_traces.remember(pipe, ws, change.seq, fields)
            await pipe.execute()
        cursor = await self.changes.publish(ws, records)
        if cursor < records[-1].change.seq:
            # An earlier record of the workspace is not on the stream yet (another
            # writer's, or one a dead worker committed): append from the log, in order.
            await self.changes.catch_up(ws)

    async def _schedule(self, ws: str, due: Mapping[int, int]) -> None:
        """Put each profile's next due instant in the due set, keeping an earlier one
        already there (ZADD LT): an early wake-up re-evaluates and reschedules."""
        if due:
            mapping = {due_member(ws, pid): at for pid, at in due.items()}
            await self._redis.zadd(self._settings.due_key, mapping, lt=True)
