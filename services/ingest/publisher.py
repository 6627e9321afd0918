"""Hot state and the event stream in Redis: the per-batch update, the catch-up loop
that makes stream delivery exactly-once in effect, and the hot-state rebuild.

Per batch, one pipelined round trip runs the Lua scripts: the hot-state update (all
keys of one workspace share the `{ws}` hash tag) and, per stream shard the batch
holds, a cursor-checked XADD of its entries for that shard (a shard's stream and its
cursor share one slot: `services.shared.streams.event_stream_cursor`). The XADD
script only appends if the stream cursor equals the seq the batch's writer saw as last
committed, so a batch can never overtake one whose publish was lost; the catch-up loop
fills such gaps from Postgres with the same ids, and Redis refuses any id it already
holds (streams.publish reports those as duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from opentelemetry import context as otel_context
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from services.ingest.ingestor import (
    HotProfile,
    HotUpdate,
    SeenProfile,
    ShardBatch,
    StreamRecord,
)
from services.ingest.store import SqlEventStore
from services.shared import hotstate, streams
from services.shared.redis import is_cluster
from services.shared.streams import shard_of_profile

log = logging.getLogger(__name__)

STREAM_KEY = streams.EVENTS_STREAM
# Same hash slot as STREAM_KEY (the tag is the stream's whole name).
CURSOR_KEY = streams.event_stream_cursor(0, 1)
DEFAULT_MAXLEN = 1_000_000

# Every write of a profile's identifiers or traits also drops the profile service's
# cached encoding of the profile (the `wire` hash, services.shared.hotstate).
#
# A merge moves the merged-away profile's audience memberships to the survivor (the
# earliest entry per audience), in the same script as the redirect: segmentation's
# reads count a membership row of a merged-away profile for its survivor from the
# moment of the merge, so GetProfile must too, without waiting for segmentation's next
# write. Its computed values go: until segmentation recomputes them over both
# histories, the survivor's own are the person's (as ExplainMembership reads them).
_HOT_SCRIPT = """
local p = KEYS[1]
local data = cjson.decode(ARGV[1])
for _, r in ipairs(data.r) do
  local m = p .. 'p:' .. r[1] .. ':'
  local s = p .. 'p:' .. r[2] .. ':audiences'
  local held = redis.call('HGETALL', m .. 'audiences')
  for i = 1, #held, 2 do
    local at = redis.call('HGET', s, held[i])
    if not at or tonumber(held[i + 1]) < tonumber(at) then
      redis.call('HSET', s, held[i], held[i + 1])
    end
  end
  if #held > 0 then redis.call('DEL', p .. 'p:' .. r[2] .. ':wire') end
  redis.call('DEL', m .. 'traits', m .. 'ids', m .. 'meta', m .. 'wire', m .. 'audiences',
    m .. 'computed')
  redis.call('SET', p .. 'merged:' .. r[1], r[2])
end
for _, u in ipairs(data.u) do
  local k = p .. 'p:' .. u.id .. ':'
  if u.x then redis.call('DEL', k .. 'traits', k .. 'ids', k .. 'wire') end
  if #u.i > 0 then
    local args = {}
    for _, id in ipairs(u.i) do
      args[#args + 1] = id
      args[#args + 1] = '1'
      redis.call('SET', p .. 'id:' .. id, u.id)
    end
    redis.call('HSET', k .. 'ids', unpack(args))
  end
  local args = {}
  for key, value in pairs(u.s) do
    args[#args + 1] = key
    args[#args + 1] = value
  end
  if #args > 0 then redis.call('HSET', k .. 'traits', unpack(args)) end
  if #u.d > 0 then redis.call('HDEL', k .. 'traits', unpack(u.d)) end
  if not u.x and (#u.i > 0 or #args > 0 or #u.d > 0) then redis.call('DEL', k .. 'wire') end
  if u.x then
    redis.call('HSET', k .. 'meta', 'created_at_us', u.c)
  else
    redis.call('HSETNX', k .. 'meta', 'created_at_us', u.c)
  end
  if u.l then
    local seen = tonumber(redis.call('HGET', k .. 'meta', 'last_seen_us') or '0')
    if u.x or tonumber(u.l) > seen then redis.call('HSET', k .. 'meta', 'last_seen_us', u.l) end
  end
end
-- Seen-only profiles: meta alone, which the wire cache never holds.
local t = data.t or {}
for i = 1, #t, 3 do
  local k = p .. 'p:' .. t[i] .. ':meta'
  redis.call('HSETNX', k, 'created_at_us', t[i + 1])
  local seen = tonumber(redis.call('HGET', k, 'last_seen_us') or '0')
  if tonumber(t[i + 2]) > seen then redis.call('HSET', k, 'last_seen_us', t[i + 2]) end
end
return 1
"""

# ARGV[5] holds the entries back to back, each a header
# "<seq> <sub> <a> <b> <event bytes> <trace bytes> " followed by the event JSON and the
# trace fields joined by newlines (W3C header values hold none). An event entry
# (sub 0) has a = profile id, a merge entry a = survivor and b = merged profile.
# One pattern match and two substrings per entry: decoding the same entries from one
# JSON argument took about twice as long in Redis, and building it longer in Python.
# The fields and their order are entry_fields()'s, which the catch-up publishes.
_STREAM_SCRIPT = """
local cursor = redis.call('GET', KEYS[2])
if cursor == false then
  if ARGV[1] ~= ARGV[3] then return 0 end
elseif cursor ~= ARGV[1] then
  return 0
end
local blob = ARGV[5]
local ws = ARGV[6]
local event = {'MAXLEN', '~', ARGV[4], '', 'kind', 'event', 'workspace_id', ws,
  'seq', '', 'profile_id', '', 'event', ''}
local merge = {'MAXLEN', '~', ARGV[4], '', 'kind', 'merge', 'workspace_id', ws,
  'seq', '', 'survivor_id', '', 'merged_id', ''}
local pos = 1
local size = #blob
while pos <= size do
  local _, stop, seq, sub, a, b, elen, tlen =
    string.find(blob, '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) ', pos)
  elen = tonumber(elen)
  tlen = tonumber(tlen)
  local args = event
  if sub == '0' then
    args[14] = string.sub(blob, stop + 1, stop + elen)
  else
    args = merge
    args[14] = b
  end
  args[4] = seq .. '-' .. sub
  args[10] = seq
  args[12] = a
  local n = 14
  if tlen > 0 then
    local trace = string.sub(blob, stop + elen + 1, stop + elen + tlen)
    local from = 1
    while true do
      local cut = string.find(trace, '\\n', from, true)
      n = n + 1
      if not cut then
        args[n] = string.sub(trace, from)
        break
      end
      args[n] = string.sub(trace, from, cut - 1)
      from = cut + 1
    end
  end
  redis.call('XADD', KEYS[1], unpack(args, 1, n))
  pos = stop + elen + tlen + 1
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def entry_id(record: StreamRecord) -> str:
    """The stream id of a record: `<seq>-0` for an event, `<seq>-<n>` for its merges."""
    return f"{record.seq}-{record.sub}"


def entry_fields(record: StreamRecord) -> dict[str, bytes | str]:
    """The stream entry fields of a record (the contract segmentation consumes)."""
    if record.kind == "merge":
        return {
            "kind": "merge",
            "workspace_id": record.workspace_id,
            "seq": str(record.seq),
            "survivor_id": str(record.survivor_id),
            "merged_id": str(record.merged_id),
        }
    return {
        "kind": "event",
        "workspace_id": record.workspace_id,
        "seq": str(record.seq),
        "profile_id": str(record.profile_id),
        "event": record.event or b"null",
    }


def _hot_payload(
    profiles: list[HotProfile],
    redirects: list[tuple[int, int]],
    replace: bool,
    seen: list[SeenProfile] | None = None,
) -> bytes:
    # Numbers travel as strings: Lua's cjson would round 16-digit microseconds.
    updates: list[dict[str, Any]] = []
    for profile in profiles:
        traits = profile.set_traits
        update: dict[str, Any] = {
            "id": str(profile.profile_id),
            "c": str(profile.created_at_us),
            "i": profile.ids,
            # Most profiles of a batch changed no trait (tracks): skip the comprehension.
            "s": {k: orjson.dumps(v).decode() for k, v in traits.items()} if traits else {},
            "d": profile.del_traits,
            "x": replace,
        }
        if profile.last_seen_us is not None:
            update["l"] = str(profile.last_seen_us)
        updates.append(update)
    # Seen-only profiles as one flat list (id, created, last seen, ...): most of a
    # batch, and a Lua table per profile cost more to decode than the work it asks.
    flat = [str(number) for profile in seen or () for number in profile]
    return orjson.dumps({"r": [[str(a), str(b)] for a, b in redirects], "u": updates, "t": flat})


def _entries(records: list[StreamRecord]) -> bytes:
    """The stream script's ARGV[5]: every record's header, event JSON and trace."""
    traces: dict[tuple[str, ...], bytes] = {}
    parts: list[bytes] = []
    for record in records:
        trace = traces.get(record.trace)
        if trace is None:
            if any("\n" in item for item in record.trace):
                # Header values hold no newline; one here would shift every later field.
                raise ValueError("a trace context field contains a newline")
            trace = traces[record.trace] = "\n".join(record.trace).encode()
        if record.sub == 0:
            event = record.event or b"null"
            parts.append(
                b"%d 0 %d 0 %d %d %b%b"
                % (record.seq, record.profile_id, len(event), len(trace), event, trace)
            )
        else:
            parts.append(
                b"%d %d %d %d 0 %d %b"
                % (record.seq, record.sub, record.survivor_id, record.merged_id, len(trace), trace)
            )
    return b"".join(parts)


class RedisPublisher:
    """Applies batches to the hot state and the stream; wakes catch-up when behind."""

    def __init__(self, redis: Redis, maxlen: int = DEFAULT_MAXLEN, shards: int = 1) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self.shards = shards
        self._hot = redis.register_script(_HOT_SCRIPT)
        self._stream = redis.register_script(_STREAM_SCRIPT)
        self._cluster = is_cluster(redis)
        self.behind = asyncio.Event()

    def wake(self) -> None:
        """Ask the catch-up loop to run now."""
        self.behind.set()

    def trace_context(self) -> tuple[str, ...]:
        """The current W3C trace context as flat stream-entry fields (name, value, ...)."""
        return tuple(item for pair in streams.trace_fields().items() for item in pair)

    async def apply(
        self,
        prev_seq: int,
        last_seq: int,
        published_seq: int,
        hot: HotUpdate,
        records: list[StreamRecord],
    ) -> bool:
        """Update hot state and append the batch's entries in one round trip.

        Returns False when the stream cursor is not at `prev_seq` (an earlier batch's
        entries are missing): the entries are then left to the catch-up loop.
        """
        return await self.apply_shards(
            hot, [ShardBatch(0, prev_seq, last_seq, published_seq, records)]
        )

    async def apply_shards(self, hot: HotUpdate, batches: list[ShardBatch]) -> bool:
        """Update hot state and append each shard's entries (its cursor checked, as in
        `apply`) in one round trip. False when any shard's cursor was not at its
        `prev_seq`: that shard's entries are left to the catch-up loop."""
        if any(r.workspace_id != hot.workspace_id for b in batches for r in b.records):
            raise ValueError("a batch's stream records belong to its one workspace")
        calls: list[tuple[AsyncScript, list[str], list[bytes | str | int]]] = []
        if hot.profiles or hot.redirects or hot.seen:
            prefix = hotstate.workspace_prefix(hot.workspace_id)
            payload = _hot_payload(hot.profiles, hot.redirects, False, hot.seen)
            calls.append((self._hot, [prefix], [payload]))
        for batch in batches:
            # The entries travel as one argument: redis-py packs each argument in
            # Python, and a batch's ~6,000 separate arguments cost ~12 ms
            # (measured). Each entry carries its request's trace context.
            args: list[bytes | str | int] = [
                batch.prev_seq,
                batch.last_seq,
                batch.published_seq,
                self._maxlen,
                _entries(batch.records),
                hot.workspace_id,
            ]
            keys = [
                streams.event_stream(batch.shard, self.shards),
                streams.event_stream_cursor(batch.shard, self.shards),
            ]
            calls.append((self._stream, keys, args))
        if self._cluster:
            # A cluster pipeline neither loads a script a node lacks (NOSCRIPT) nor
            # keeps one node's order: the calls go one by one, hot state first, as
            # the pipeline runs them.
            replies = [await script(keys=keys, args=args) for script, keys, args in calls]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    await script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        return all(bool(reply) for reply in replies[len(replies) - len(batches) :])

    async def write_profiles(
        self, workspace_id: str, profiles: list[HotProfile], redirects: list[tuple[int, int]]
    ) -> None:
        """Replace these profiles' hot traits/ids/meta with the given full state."""
        prefix = hotstate.workspace_prefix(workspace_id)
        await self._hot(keys=[prefix], args=[_hot_payload(profiles, redirects, True)])


class StreamCatchUp:
    """Background loop: republishes committed events the stream is missing.

    Runs under the ingest write lock, reads the stream cursor, publishes every event
    (and merge) after it from Postgres with the same ids, refreshes the hot state of
    the profiles they touched, and keeps a durable copy of the cursor in Postgres.
    """

    def __init__(
        self,
        store: SqlEventStore,
        redis: Redis,
        publisher: RedisPublisher,
        interval_seconds: float = 1.0,
        chunk: int = 5000,
        maxlen: int = DEFAULT_MAXLEN,
    ) -> None:
        self._store = store
        self._redis = redis
        self._publisher = publisher
        self._interval = interval_seconds
        self._chunk = chunk
        self._maxlen = maxlen

    async def _redis_cursor(self, shard: int) -> int | None:
        value = await self._redis.get(streams.event_stream_cursor(shard, self._store.shards))
        return None if value is None else int(value)

    async def run_once(self) -> int:
        """Publish whatever any shard's stream is missing; returns how many entries
        were added. Shard by shard, each under its own lock only."""
        added = 0
        for shard in range(self._store.shards):
            added += await self._run_shard(shard)
        return added

    async def _run_shard(self, shard: int) -> int:
        count = self._store.shards
        stream = streams.event_stream(shard, count)
        cursor_key = streams.event_stream_cursor(shard, count)
        cursor = await self._redis_cursor(shard)
        last_seq, published_seq = await self._store.cursor(shard=shard)
        if cursor is not None and cursor >= last_seq:
            if cursor > published_seq:
                await self._store.set_published(cursor, shard)
            return 0
        added = 0
        async with self._store.locked((shard,)) as connection:
            last_seq, published_seq = await self._store.cursor(connection, shard)
            await connection.rollback()
            while True:
                cursor = await self._redis_cursor(shard)
                start = published_seq if cursor is None else cursor
                if start >= last_seq:
                    break
                records, covered = await self._store.records_after(
                    connection, start, last_seq, self._chunk, shard
                )
                await connection.rollback()
                # Catch-up entries carry this loop's trace, not the original request's.
                token = otel_context.attach(otel_context.Context())
                try:
                    ids = await streams.publish(
                        self._redis,
                        stream,
                        [(entry_id(r), entry_fields(r)) for r in records],
                        maxlen=self._maxlen,
                    )
                finally:
                    otel_context.detach(token)
                added += sum(1 for i in ids if i is not None)
                await self._refresh_hot_state(records, shard)
                await self._redis.set(cursor_key, covered)
                await self._store.set_published(covered, shard)
        return added

    async def _refresh_hot_state(self, records: list[StreamRecord], shard: int) -> None:
        count = self._store.shards
        touched: dict[str, set[int]] = {}
        for record in records:
            ids = touched.setdefault(record.workspace_id, set())
            pid = record.profile_id if record.kind == "event" else record.survivor_id
            # Only this shard's profiles, whose writers wait for the lock held here: a
            # survivor on another shard may have newer state in Redis than the rows
            # read now (the redirect of the merged profile is written either way).
            if shard_of_profile(pid, count) == shard:
                ids.add(pid)
        for workspace_id, profile_ids in touched.items():
            profiles = [
                profile
                for profile in await self._store.hot_profiles(workspace_id, sorted(profile_ids))
                if shard_of_profile(profile.profile_id, count) == shard
            ]
            redirects = [
                (r.merged_id, r.survivor_id)
                for r in records
                if r.kind == "merge" and r.workspace_id == workspace_id
            ]
            await self._publisher.write_profiles(workspace_id, profiles, redirects)

    async def run(self) -> None:
        """Loop until cancelled: every interval, or at once when woken."""
        while True:
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # inner result when a wake and a cancellation land in the same loop
                # pass, so the cancellation was lost and a SIGTERM drain that awaits
                # this task never ended.
                async with asyncio.timeout(self._interval):
                    await self._publisher.behind.wait()
            self._publisher.behind.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream catch-up failed; retrying")


async def rebuild_workspace(
    store: SqlEventStore,
    redis: Redis,
    publisher: RedisPublisher,
    workspace_id: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Recreate a workspace's hot identifiers, traits and meta from Postgres.

    Audience, computed-trait, prediction and recommendation sections belong to other
    services and are left alone. Returns how many profiles were written; `progress`
    hears the count so far after each page.
    """
    prefix = hotstate.workspace_prefix(workspace_id)
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        rest = name[len(prefix) :]
        if rest.startswith(("id:", "merged:")) or rest.endswith(
            (":traits", ":ids", ":meta", ":wire")
        ):
            await redis.delete(name)
    written = 0
    after_id = 0
    redirects = await store.redirects(workspace_id)
    while True:
        page = await store.hot_profiles(workspace_id, after_id=after_id, limit=1000)
        if not page and not redirects:
            break
        await publisher.write_profiles(workspace_id, page, redirects)
        redirects = []
        written += len(page)
        if not page:
            break
        if progress is not None:
            progress(written)
        after_id = page[-1].profile_id
    return written
