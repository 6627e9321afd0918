"""Seed profile state the way the writers leave it, without running them.

Hot state goes into real Redis in exactly the layout of services.shared.hotstate
(written by ingest, segmentation and prediction); durable rows go into the shared
Postgres tables (profiles, identities, events, profile_traits) as ingest stores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as redis_asyncio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared import hotstate
from services.shared.db.tables import events, identities, profile_traits, profiles


@dataclass
class HotSeed:
    """One profile's hot state."""

    profile_id: int
    identifiers: Sequence[tuple[str, str]]
    traits: Mapping[str, Any] = field(default_factory=dict)
    computed: Mapping[str, Any] = field(default_factory=dict)
    audiences: Mapping[str, int] = field(default_factory=dict)
    predictions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    recs: Sequence[Mapping[str, Any]] | None = None
    last_seen_us: int | None = None
    created_at_us: int | None = None


async def seed_hot(redis: redis_asyncio.Redis, workspace_id: str, seed: HotSeed) -> None:
    """Write one profile's hot state and its identity keys (one pipeline)."""
    pid = seed.profile_id

    def key(section: str) -> str:
        return hotstate.profile_key(workspace_id, pid, section)

    async with redis.pipeline(transaction=True) as pipe:
        # As every writer does: no cached encoding outlives the sections written.
        pipe.delete(key("wire"))
        for id_type, id_value in seed.identifiers:
            pipe.set(hotstate.identity_key(workspace_id, id_type, id_value), str(pid))
            pipe.hset(key("ids"), f"{id_type}:{id_value}", "1")
        if seed.traits:
            pipe.hset(key("traits"), mapping={k: orjson.dumps(v) for k, v in seed.traits.items()})
        if seed.computed:
            pipe.hset(
                key("computed"), mapping={k: orjson.dumps(v) for k, v in seed.computed.items()}
            )
        if seed.audiences:
            pipe.hset(key("audiences"), mapping={k: str(v) for k, v in seed.audiences.items()})
        if seed.predictions:
            pipe.hset(
                key("predictions"),
                mapping={k: orjson.dumps(v) for k, v in seed.predictions.items()},
            )
        if seed.recs is not None:
            pipe.set(key("recs"), orjson.dumps(list(seed.recs)))
        meta = {}
        if seed.last_seen_us is not None:
            meta["last_seen_us"] = str(seed.last_seen_us)
        if seed.created_at_us is not None:
            meta["created_at_us"] = str(seed.created_at_us)
        if meta:
            pipe.hset(key("meta"), mapping=meta)
        await pipe.execute()


async def seed_hot_merge(
    redis: redis_asyncio.Redis,
    workspace_id: str,
    merged_id: int,
    survivor_id: int,
    identifiers: Sequence[tuple[str, str]],
) -> None:
    """A merged-away profile: its identity keys still name it, its redirect names the survivor.

    (Ingest repoints identity keys at the survivor; leaving them on the old id tests
    that readers follow the redirect too.)
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(hotstate.merged_key(workspace_id, merged_id), str(survivor_id))
        pipe.delete(hotstate.profile_key(workspace_id, survivor_id, "wire"))
        for id_type, id_value in identifiers:
            pipe.set(hotstate.identity_key(workspace_id, id_type, id_value), str(merged_id))
            pipe.hset(
                hotstate.profile_key(workspace_id, survivor_id, "ids"), f"{id_type}:{id_value}", "1"
            )
        await pipe.execute()


async def seed_db_profile(
    engine: AsyncEngine,
    workspace_id: str,
    identifiers: Sequence[tuple[str, str]],
    created_at_us: int,
    canonical_id: int | None = None,
    traits: Mapping[str, Any] | None = None,
) -> int:
    """A profiles row with its identities (and traits); returns the new profile id."""
    async with engine.begin() as connection:
        result = await connection.execute(
            insert(profiles)
            .values(workspace_id=workspace_id, canonical_id=0, created_at_us=created_at_us)
            .returning(profiles.c.profile_id)
        )
        pid = int(result.scalar_one())
        await connection.execute(
            profiles.update()
            .where(profiles.c.profile_id == pid)
            .values(canonical_id=canonical_id if canonical_id is not None else pid)
        )
        if identifiers:
            await connection.execute(
                insert(identities),
                [
                    {
                        "workspace_id": workspace_id,
                        "id_type": t,
                        "id_value": v,
                        "profile_id": pid,
                        "first_seen_us": created_at_us,
                    }
                    for t, v in identifiers
                ],
            )
        if traits:
            await connection.execute(
                insert(profile_traits),
                [
                    {
                        "profile_id": pid,
                        "key": k,
                        "workspace_id": workspace_id,
                        "value": v,
                        "timestamp_us": created_at_us,
                        "seq": 0,
                    }
                    for k, v in traits.items()
                ],
            )
    return pid


async def seed_events(
    engine: AsyncEngine, workspace_id: str, profile_id: int, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Insert events of a profile; each row needs message_id, type, timestamp_us
    (name, properties, traits, context optional). Returns their seqs."""
    async with engine.begin() as connection:
        result = await connection.execute(
            insert(events).returning(events.c.seq),
            [
                {
                    "workspace_id": workspace_id,
                    "profile_id": profile_id,
                    "received_at_us": row["timestamp_us"],
                    "name": None,
                    "properties": None,
                    "traits": None,
                    "context": None,
                    "user_id": None,
                    "anonymous_id": None,
                    **row,
                }
                for row in rows
            ],
        )
        return [int(seq) for seq in result.scalars()]
