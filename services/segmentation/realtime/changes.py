"""The `changes` stream as a durable mirror of the change log.

A change record is committed to Postgres first and appended to the stream after, so a
worker dying between the two would lose the stream entry. Instead of trusting that
single append, the stream is published *from the log by per-workspace seq*: a cursor
per workspace (a hash field in Redis: the last seq published) and one Lua script that
appends only the records that continue the cursor (seq = cursor + 1, + 2, ...) and
moves it, atomically. So

- publishing the same records twice (a redelivered batch, two workers, a catch-up
  racing the worker that committed them) appends nothing twice;
- a record that would skip an unpublished one is not appended: the caller then catches
  up from the log (``catch_up``), which reads every record after the cursor, with the
  trace context stored on it (``membership_changes.traceparent``/``tracestate``);
- every record of the log reaches the stream, whoever wrote it (the worker, a backfill,
  a Recompute, the reconcile, an erasure), in seq order per workspace.

The worker publishes each batch's records right after its commit (the fast path) and
catches up every workspace whose log head is past its cursor at start and every
``claim_every_seconds``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.asyncio import Redis

from services.segmentation.realtime.store import LoggedChange, RealtimeStore

log = logging.getLogger(__name__)

# KEYS[1] the changes stream, KEYS[2] the cursor hash (workspace -> last published seq).
# ARGV[1] workspace, ARGV[2] approximate MAXLEN, then per record: seq, field count n,
# n field/value pairs. Records at or below the cursor are skipped (published already);
# the first one beyond cursor + 1 stops the run (a gap: catch up from the log). Returns
# the cursor after.
_PUBLISH = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local i = 3
while i <= #ARGV do
  local seq = tonumber(ARGV[i])
  local n = tonumber(ARGV[i + 1])
  if seq == last + 1 then
    local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
    for j = i + 2, i + 1 + 2 * n do args[#args + 1] = ARGV[j] end
    redis.call(unpack(args))
    last = seq
  elseif seq > last + 1 then
    break
  end
  i = i + 2 + 2 * n
end
redis.call('HSET', KEYS[2], ARGV[1], last)
return last
"""

# Records per script call: keeps one call's arguments (and Redis's pause) small.
_CHUNK = 500


def entry_fields(ws: str, record: LoggedChange) -> list[str]:
    """The stream entry of a change record as field, value, field, value, ..."""
    c = record.change
    fields = [
        "kind",
        c.kind,
        "workspace_id",
        ws,
        "seq",
        str(c.seq),
        "audience_id",
        str(c.audience_id),
        "audience_key",
        c.audience_key,
        "profile_id",
        str(c.profile_id),
        "at_us",
        str(c.at_us),
        "version",
        str(c.version),
    ]
    for name in ("traceparent", "tracestate"):
        if name in record.trace:
            fields += [name, record.trace[name]]  # the causing event's trace context
    return fields


class ChangesPublisher:
    """Appends change records to the changes stream exactly once each, in seq order."""

    def __init__(
        self, redis: Redis, store: RealtimeStore, stream: str, maxlen: int, cursor_key: str
    ) -> None:
        self._redis = redis
        self._store = store
        self._stream = stream
        self._maxlen = maxlen
        self._cursor_key = cursor_key
        self._script = redis.register_script(_PUBLISH)

    async def publish(self, ws: str, records: Sequence[LoggedChange]) -> int:
        """Append the records that continue the workspace's cursor; returns the cursor
        after (below the last record's seq when an earlier record is unpublished)."""
        cursor = -1
        for start in range(0, max(len(records), 1), _CHUNK):
            args: list[str | int] = [ws, self._maxlen]
            for record in records[start : start + _CHUNK]:
                fields = entry_fields(ws, record)
                args += [record.change.seq, len(fields) // 2, *fields]
            cursor = int(await self._script(keys=[self._stream, self._cursor_key], args=args))
        return cursor

    async def published(self, ws: str) -> int:
        """The last seq of `ws` on the stream (0: none)."""
        value = await self._redis.hget(self._cursor_key, ws)
        return int(value) if value is not None else 0

    async def catch_up(self, ws: str) -> int:
        """Append every record of the workspace's log after its cursor, with the trace
        context stored on it; returns how many were appended."""
        total = 0
        cursor = await self.published(ws)
        while True:
            records = await self._store.log_after(ws, cursor, _CHUNK)
            if not records:
                return total
            after = await self.publish(ws, records)
            if after <= cursor:
                return total  # another publisher holds the cursor's next record
            total += after - cursor
            cursor = after

    async def catch_up_all(self) -> int:
        """Catch up every workspace whose log is ahead of the stream; returns how many
        records were appended (logged, with the workspaces)."""
        heads = await self._store.log_heads()
        if not heads:
            return 0
        raw = await self._redis.hgetall(self._cursor_key)
        cursors = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        total = 0
        for ws, head in sorted(heads.items()):
            if head > cursors.get(ws, 0):
                appended = await self.catch_up(ws)
                if appended:
                    log.info("changes stream: republished %d records of %s", appended, ws)
                total += appended
        return total
