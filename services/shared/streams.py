"""Redis Streams helpers shared by ingest (publisher), segmentation and sync (consumers).

Entries may be published with caller-chosen ids (e.g. ``<event seq>-0``) so that
re-publishing after a crash is idempotent: Redis refuses an id that is not above the
stream's top, which we report as a duplicate rather than an error. Each entry carries
the W3C ``traceparent`` of the publishing span so one trace follows an event through
every service.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as redis_asyncio
from opentelemetry import context as otel_context
from opentelemetry import propagate
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from services.shared.redis import is_cluster

TRACE_FIELDS = ("traceparent", "tracestate")

# Ingest's stream of every accepted event (and merge), read by segmentation. An
# event's entry id is ``<event seq>-0``; its merges are ``<event seq>-<n>``.
EVENTS_STREAM = "stream:events"
# The realtime worker appends every membership change here (for syncs).
CHANGES_STREAM = "stream:changes"
# The prediction service announces each replaced set of scores ({workspace, key}):
# segmentation recomputes the audiences with prediction conditions on it.
RESCORED_STREAM = "stream:rescored"
RESCORED_MAXLEN = 10_000


def shard_count() -> int:
    """How many event stream shards ingest writes (INGEST_SHARDS, default 1).

    Every process of a deployment must agree on it: ingest routes a profile's events to
    `shard_of_profile`, consumers read `event_streams()`."""
    value = int(os.environ.get("INGEST_SHARDS") or "1")
    if value < 1:
        raise ValueError(f"INGEST_SHARDS must be at least 1, got {value}")
    return value


def shard_of_profile(profile_id: int, shards: int) -> int:
    """The shard whose stream carries the events attributed to `profile_id`."""
    return profile_id % shards


def event_stream(shard: int, shards: int) -> str:
    """The stream of one shard. With one shard it is `EVENTS_STREAM` itself, so a
    deployment that never sharded keeps its stream (and its consumer groups)."""
    return EVENTS_STREAM if shards == 1 else f"{EVENTS_STREAM}:{shard}"


def event_stream_cursor(shard: int, shards: int) -> str:
    """The key of a shard stream's publish cursor: hash tag = the stream's name, so the
    stream and its cursor share a Redis Cluster slot (one Lua script touches both)."""
    return "{" + event_stream(shard, shards) + "}:cursor"


def event_streams(shards: int | None = None) -> tuple[str, ...]:
    """Every shard's stream, in shard order (default: `shard_count()` shards)."""
    count = shard_count() if shards is None else shards
    return tuple(event_stream(shard, count) for shard in range(count))


def event_entry_id(seq: int) -> str:
    """The `EVENTS_STREAM` entry id of the event with this seq."""
    return f"{seq}-0"


@dataclass(frozen=True)
class StreamEntry:
    """One stream entry: its id and fields (bytes -> bytes)."""

    id: str
    fields: dict[bytes, bytes]

    def trace_context(self) -> otel_context.Context:
        """The OpenTelemetry context the publisher left in this entry."""
        carrier = {
            name: self.fields[name.encode()].decode()
            for name in TRACE_FIELDS
            if name.encode() in self.fields
        }
        return propagate.extract(carrier)


def trace_fields() -> dict[str, str]:
    """The current W3C trace context as stream entry fields (empty when not tracing).

    Computed once per batch by publishers of many entries: injecting per entry costs
    more than building the entry."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def with_trace_context(fields: Mapping[str, bytes | str]) -> dict[str, bytes | str]:
    """A copy of `fields` with the current W3C trace context added."""
    return {**fields, **trace_fields()}


async def publish(
    redis: redis_asyncio.Redis,
    stream: str,
    entries: Sequence[tuple[str | None, Mapping[str, bytes | str]]],
    maxlen: int | None = None,
) -> list[str | None]:
    """XADD every entry in one pipelined round trip.

    Each entry is (id or None for '*', fields); the current trace context is added to
    each. Returns the new ids in order, None where the id was not above the stream's
    top (already published: idempotent re-publish).
    """
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id, fields in entries:
            pipe.xadd(
                stream,
                # str keys are fields too: dict keys are invariant, so say it.
                cast("dict[FieldT, EncodableT]", with_trace_context(fields)),
                id=entry_id or "*",
                maxlen=maxlen,
                approximate=True,
            )
        replies = await pipe.execute(raise_on_error=False)
    results: list[str | None] = []
    for reply in replies:
        if isinstance(reply, ResponseError):
            if "equal or smaller" in str(reply):
                results.append(None)
                continue
            raise reply
        results.append(reply.decode() if isinstance(reply, bytes) else reply)
    return results


async def ensure_group(
    redis: redis_asyncio.Redis, stream: str, group: str, start: str = "0"
) -> None:
    """Create the consumer group (and the stream) unless it exists."""
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _entries(reply: Sequence[Any]) -> list[StreamEntry]:
    return [
        StreamEntry(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields)
        for entry_id, fields in reply
        if fields is not None  # deleted entries come back with no fields
    ]


async def read_group(
    redis: redis_asyncio.Redis,
    stream: str,
    group: str,
    consumer: str,
    count: int = 500,
    block_ms: int | None = 1000,
) -> list[StreamEntry]:
    """New entries for this consumer (XREADGROUP >), waiting up to block_ms."""
    # RESP2 (the clients' protocol): a list of [stream, entries] pairs.
    reply = cast(
        "list[Any]",
        await redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms),
    )
    if not reply:
        return []
    return _entries(reply[0][1])


async def read_groups(
    redis: redis_asyncio.Redis,
    streams: Sequence[str],
    group: str,
    consumer: str,
    count: int = 500,
    block_ms: int | None = 1000,
) -> list[tuple[str, StreamEntry]]:
    """New entries of several streams (shards) for this consumer in one XREADGROUP,
    as (stream, entry) pairs; at most `count` per stream.

    On a Redis Cluster the shards' streams hash to different slots, so each stream is
    read on its own: first without waiting, and only when none has anything, all of
    them waiting (concurrently) up to `block_ms`; the answer then comes once every
    read has ended (a read cancelled midway could lose the entries it took)."""
    if len(streams) > 1 and is_cluster(redis):
        pending = await _read_each(redis, streams, group, consumer, count, None)
        if pending or block_ms is None:
            return pending
        return await _read_each(redis, streams, group, consumer, count, block_ms)
    # RESP2: a list of [stream, entries] pairs, one per stream with new entries.
    reply = cast(
        "list[Any]",
        await redis.xreadgroup(
            group, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
        ),
    )
    out: list[tuple[str, StreamEntry]] = []
    for name, entries in reply or []:
        stream = name.decode() if isinstance(name, bytes) else str(name)
        out += [(stream, entry) for entry in _entries(entries)]
    return out


async def _read_each(
    redis: redis_asyncio.Redis,
    streams: Sequence[str],
    group: str,
    consumer: str,
    count: int,
    block_ms: int | None,
) -> list[tuple[str, StreamEntry]]:
    reads = await asyncio.gather(
        *(read_group(redis, stream, group, consumer, count, block_ms) for stream in streams)
    )
    return [
        (stream, entry) for stream, entries in zip(streams, reads, strict=True) for entry in entries
    ]


def group_gone(error: Exception) -> bool:
    """Whether a read failed because the stream or its consumer group does not exist
    (Redis says NOGROUP; the embedded store says the key must exist): after a Redis
    restart without persistence or an operator's flush, the consumer creates it again."""
    text = str(error)
    return "NOGROUP" in text or "key to exist" in text


async def ack(redis: redis_asyncio.Redis, stream: str, group: str, ids: Sequence[str]) -> int:
    """Acknowledge processed entries; returns how many were pending."""
    if not ids:
        return 0
    return int(await redis.xack(stream, group, *ids))


async def claim_stale(
    redis: redis_asyncio.Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    count: int = 500,
) -> list[StreamEntry]:
    """Take over entries another consumer read but did not ack within min_idle_ms."""
    return (await claim_stale_page(redis, stream, group, consumer, min_idle_ms, "0-0", count))[1]


async def claim_stale_page(
    redis: redis_asyncio.Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    start: str = "0-0",
    count: int = 500,
) -> tuple[str, list[StreamEntry]]:
    """One XAUTOCLAIM page from `start`: (the cursor of the next page, "0-0" after the
    last; the entries taken over)."""
    reply = await redis.xautoclaim(stream, group, consumer, min_idle_ms, start, count=count)
    cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return cursor, _entries(reply[1])
