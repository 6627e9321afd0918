"""Helpers for the ingest integration tests: building events, reading the store,
the stream and the hot state."""

from __future__ import annotations

import time
from typing import Any

import orjson
from audiences.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.publisher import STREAM_KEY
from services.shared import hotstate
from services.shared.db.tables import events, identities, profile_traits, profiles

NOW_US = 1_735_689_600_000_000  # the FixedClock of tests/conftest.py
TYPES = {
    "track": ingest_pb2.EVENT_TYPE_TRACK,
    "identify": ingest_pb2.EVENT_TYPE_IDENTIFY,
    "page": ingest_pb2.EVENT_TYPE_PAGE,
    "screen": ingest_pb2.EVENT_TYPE_SCREEN,
    "group": ingest_pb2.EVENT_TYPE_GROUP,
    "alias": ingest_pb2.EVENT_TYPE_ALIAS,
}


def stamp(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def event(
    kind: str = "track",
    message_id: str = "",
    user_id: str = "",
    anonymous_id: str = "",
    at_us: int | None = None,
    properties: Any = None,
    traits: Any = None,
    context: Any = None,
    **extra: Any,
) -> ingest_pb2.Event:
    """A protobuf event; JSON payloads given as objects are encoded, bytes kept as is."""

    def payload(value: Any) -> bytes:
        if value is None:
            return b""
        return value if isinstance(value, bytes) else orjson.dumps(value)

    if kind == "track":
        extra.setdefault("event", "Order Completed")
    message = ingest_pb2.Event(
        type=TYPES.get(kind, 0),
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        properties=payload(properties),
        traits=payload(traits),
        context=payload(context),
        **extra,
    )
    if at_us is not None:
        message.timestamp.CopyFrom(stamp(at_us))
    return message


async def stored_events(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(events).order_by(events.c.seq))
        return [dict(row._mapping) for row in rows]


async def canonical_of(engine: AsyncEngine, workspace_id: str, id_type: str, value: str) -> int:
    """The live canonical profile an identifier belongs to."""
    async with engine.connect() as connection:
        pid = (
            await connection.execute(
                select(profiles.c.canonical_id)
                .join(identities, identities.c.profile_id == profiles.c.profile_id)
                .where(
                    identities.c.workspace_id == workspace_id,
                    identities.c.id_type == id_type,
                    identities.c.id_value == value,
                )
            )
        ).scalar_one()
    return int(pid)


async def profile_views(engine: AsyncEngine, workspace_id: str) -> dict[frozenset[str], dict]:
    """Every live canonical profile as {its identifiers: its traits} (ids are not compared)."""
    async with engine.connect() as connection:
        live = (
            (
                await connection.execute(
                    select(profiles.c.profile_id).where(
                        profiles.c.workspace_id == workspace_id,
                        profiles.c.canonical_id == profiles.c.profile_id,
                    )
                )
            )
            .scalars()
            .all()
        )
        view: dict[frozenset[str], dict] = {}
        for pid in live:
            ids = frozenset(
                f"{r.id_type}:{r.id_value}"
                for r in await connection.execute(
                    select(identities).where(identities.c.profile_id == pid)
                )
            )
            traits = {
                r.key: r.value
                for r in await connection.execute(
                    select(profile_traits).where(profile_traits.c.profile_id == pid)
                )
                if r.value is not None
            }
            view[ids] = traits
    return view


async def stream_entries(redis: Redis) -> list[tuple[str, dict[str, str]]]:
    entries = await redis.xrange(STREAM_KEY)
    return [
        (
            entry_id.decode(),
            {k.decode(): v.decode() for k, v in fields.items()},
        )
        for entry_id, fields in entries
    ]


async def hot_traits(redis: Redis, workspace_id: str, profile_id: int) -> dict[str, Any]:
    raw = await redis.hgetall(hotstate.profile_key(workspace_id, profile_id, "traits"))
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


async def wait_for(predicate, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll an async predicate until it holds (a condition with a deadline, not a sleep)."""
    import asyncio

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met in time")


async def hot_view(redis: Redis, workspace_id: str) -> dict[frozenset[str], dict[str, Any]]:
    """Every hot profile of a workspace as {its identifiers: traits and last seen}, so
    two workspaces fed the same events compare equal whatever their profile ids."""
    prefix = hotstate.workspace_prefix(workspace_id)
    view: dict[frozenset[str], dict[str, Any]] = {}
    async for key in redis.scan_iter(match=f"{prefix}p:*:ids"):
        profile_id = key.decode()[len(prefix) :].split(":")[1]
        ids = frozenset(k.decode() for k in await redis.hkeys(key))
        traits = await hot_traits(redis, workspace_id, int(profile_id))
        meta = await redis.hgetall(hotstate.profile_key(workspace_id, profile_id, "meta"))
        view[ids] = {"traits": traits, "last_seen_us": meta.get(b"last_seen_us")}
        # Every identifier resolves to this profile.
        for identifier in ids:
            id_type, _, value = identifier.partition(":")
            owner = await redis.get(hotstate.identity_key(workspace_id, id_type, value))
            assert owner is not None and owner.decode() == profile_id, identifier
    return view
