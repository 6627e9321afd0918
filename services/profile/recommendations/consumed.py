"""What profiles consumed since the last training, so the popular list served to a
profile without a list of its own leaves those items out (docs/recommendations.md,
"Cold profiles").

A profile's own list is computed at training with its consumed items left out; a
profile that has none for an object (it first interacted, or was created, after the
training) is served the object's popular list, which the training could not tailor.
This worker of the profile service reads ingest's event streams (a consumer group of
its own, shared by the replicas) and, for each track event that is an item event of
an object that does not recommend consumed items, adds ``<object key>:<item id>`` to
the profile's ``recs_consumed`` set, only while the profile has no list of its own of
that object (the next training's list covers it), and drops the profile's cached wire
encoding when the member is new. The read script (services.profile.hotread) filters
the popular items against that set in its one round trip, refilling from the
object's reserve of further popular items.

The set expires CONSUMED_TTL_SECONDS after its last addition: by then a training
(daily by default) has given the profile a list of its own. A merge moves the
merged-away profile's set into the survivor's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.profile.tables import recommendation_models
from services.shared import hotstate, streams

log = logging.getLogger(__name__)

GROUP = "profile-recs-consumed"
SECTION = "recs_consumed"
# Long enough for the next training (daily by default) to give the profile its own list.
CONSUMED_TTL_SECONDS = 3 * 86_400
BATCH = 500
BLOCK_MS = 1000
# Entries a consumer read and did not acknowledge for this long (its replica died) are
# taken over, checked every CLAIM_EVERY_SECONDS.
CLAIM_IDLE_MS = 60_000
CLAIM_EVERY_SECONDS = 30.0

# KEYS: per addition, the profile's recs_consumed key. ARGV[1]: the TTL; ARGV[2k],
# ARGV[2k+1]: the k-th addition's object key and member. Added only while the profile
# has no list of its own of the object; a new member drops the cached wire encoding,
# which may hold the popular list as it was.
_ADD_LUA = (
    """
local ttl = ARGV[1]
local added = 0
for k = 1, #KEYS do
  local base = string.sub(KEYS[k], 1, -(#'SECTION' + 1))
  if redis.call('HEXISTS', base .. 'recs_by_model', ARGV[2 * k]) == 0 then
    if redis.call('SADD', KEYS[k], ARGV[2 * k + 1]) == 1 then
      redis.call('DEL', base .. 'wire')
      added = added + 1
    end
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
return added
"""
).replace("SECTION", SECTION)

# KEYS[1]: the merged-away profile's set, KEYS[2]: the survivor's, KEYS[3]: the
# survivor's wire cache. ARGV[1]: the TTL.
_MERGE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SUNIONSTORE', KEYS[2], KEYS[2], KEYS[1])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Tracked:
    """An object whose consumed items are left out: its key and item property."""

    key: str
    item_property: str


def item_text(value: Any) -> str | None:
    """An item property's value as the training names items (services.profile.
    recommendations.store reads it as SQL text): strings as they are, integral numbers
    without a fraction, true/false; None for what names no item."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return None


def consumer_name() -> str:
    """This process's consumer name in the group (host and pid: unique per replica)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ConsumedItems:
    """Keeps the profiles' recs_consumed sets from the event streams."""

    def __init__(
        self, redis: Redis, engine: AsyncEngine, stream_names: Sequence[str] | None = None
    ) -> None:
        self._redis = redis
        self._engine = engine
        self._streams = tuple(stream_names or streams.event_streams())
        self._consumer = consumer_name()
        self._add = redis.register_script(_ADD_LUA)
        self._merge = redis.register_script(_MERGE_LUA)

    async def run(self) -> None:
        """Consume forever (a worker of the profile service)."""
        ready = False
        claimed_at = time.monotonic()
        while True:
            try:
                if not ready:
                    await self._ensure_groups()
                    ready = True
                if time.monotonic() - claimed_at >= CLAIM_EVERY_SECONDS:
                    claimed_at = time.monotonic()
                    for stream in self._streams:
                        entries = await streams.claim_stale(
                            self._redis, stream, GROUP, self._consumer, CLAIM_IDLE_MS, BATCH
                        )
                        await self.handle([(stream, e) for e in entries])
                read = await streams.read_groups(
                    self._redis, self._streams, GROUP, self._consumer, BATCH, BLOCK_MS
                )
                await self.handle(read)
            except asyncio.CancelledError:
                raise
            except ResponseError as error:
                # The stream went (a Redis restart without persistence, a flush: a
                # blocked read then says UNBLOCKED): create the group again.
                if streams.group_gone(error) or "UNBLOCKED" in str(error):
                    ready = False
                    continue
                log.exception("consumed items: a batch failed; retrying")
                await asyncio.sleep(1)  # a pause before the retry, not synchronisation
            except Exception:
                log.exception("consumed items: a batch failed; retrying")
                await asyncio.sleep(1)  # a pause before the retry, not synchronisation

    async def _ensure_groups(self) -> None:
        for stream in self._streams:
            await streams.ensure_group(self._redis, stream, GROUP)

    async def handle(self, entries: Sequence[tuple[str, streams.StreamEntry]]) -> int:
        """Apply a batch of (stream, entry) and acknowledge it; returns the new members."""
        if not entries:
            return 0
        added = await self.apply(entry for _, entry in entries)
        by_stream: dict[str, list[str]] = {}
        for stream, entry in entries:
            by_stream.setdefault(stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            await streams.ack(self._redis, stream, GROUP, ids)
        return added

    async def apply(self, entries: Iterable[streams.StreamEntry]) -> int:
        """Record the consumption (and merges) these entries carry; returns how many
        members were new."""
        events: list[tuple[str, int, dict[str, Any]]] = []
        merges: list[tuple[str, int, int]] = []
        for entry in entries:
            f = entry.fields
            ws = f.get(b"workspace_id", b"").decode()
            kind = f.get(b"kind", b"event")
            try:
                if kind == b"event":
                    event = orjson.loads(f.get(b"event") or b"null")
                    if isinstance(event, dict) and event.get("type") == "track":
                        events.append((ws, int(f[b"profile_id"]), event))
                elif kind == b"merge":
                    merges.append((ws, int(f[b"merged_id"]), int(f[b"survivor_id"])))
            except (KeyError, ValueError, orjson.JSONDecodeError):
                continue  # malformed: never valid on redelivery either
        added = 0
        tracked = await self._tracked({ws for ws, _, _ in events})
        # One script call per workspace (its keys share the workspace's hash tag).
        per_workspace: dict[str, tuple[list[str], list[str]]] = {}
        for ws, pid, event in events:
            objects = tracked.get(ws, {}).get(event.get("name") or "")
            properties = event.get("properties")
            if not objects or not isinstance(properties, dict):
                continue
            for tracked_object in objects:
                item = item_text(properties.get(tracked_object.item_property))
                if item is None:
                    continue
                keys, args = per_workspace.setdefault(ws, ([], []))
                keys.append(hotstate.profile_key(ws, pid, SECTION))
                args += [tracked_object.key, f"{tracked_object.key}:{item}"]
        for keys, args in per_workspace.values():
            added += int(await self._add(keys=keys, args=[CONSUMED_TTL_SECONDS, *args]))
        for ws, merged, survivor in merges:
            await self._merge(
                keys=[
                    hotstate.profile_key(ws, merged, SECTION),
                    hotstate.profile_key(ws, survivor, SECTION),
                    hotstate.profile_key(ws, survivor, "wire"),
                ],
                args=[CONSUMED_TTL_SECONDS],
            )
        return added

    async def _tracked(self, workspace_ids: set[str]) -> dict[str, dict[str, list[Tracked]]]:
        """Workspace -> item event name -> the objects that leave consumed items out.
        Read per batch (one small query), so a new object counts from its creation."""
        if not workspace_ids:
            return {}
        models = recommendation_models
        query = select(
            models.c.workspace_id, models.c.key, models.c.item_events, models.c.item_property
        ).where(
            models.c.workspace_id.in_(sorted(workspace_ids)), models.c.recommend_consumed.is_(False)
        )
        found: dict[str, dict[str, list[Tracked]]] = {}
        async with self._engine.connect() as connection:
            for ws, key, item_events, item_property in await connection.execute(query):
                if isinstance(item_events, str | bytes):
                    item_events = orjson.loads(item_events)
                for event in item_events:
                    found.setdefault(ws, {}).setdefault(event["event_name"], []).append(
                        Tracked(key, item_property)
                    )
        return found
