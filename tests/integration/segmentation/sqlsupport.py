"""Databases for the segmentation SQL tests: a fresh SQLite file, or a private Postgres
schema, with the shared and segmentation tables created by ``metadata.create_all``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.segmentation import tables as seg
from services.segmentation.language import parse_computed_trait
from services.segmentation.sql import evaluate_computed_trait
from services.shared.db.tables import events, identities, metadata, profile_traits, profiles
from tests.unit.segmentation.conformance_cases import Resolved, close

PG_URL = os.environ.get(
    "SEGMENTATION_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
WS = "ws_conformance"


@asynccontextmanager
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'seg.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def postgres_engine() -> AsyncIterator[AsyncEngine]:
    """A uniquely named schema, first on the search_path, dropped afterwards: the test
    never touches anyone else's tables."""
    schema = f"seg_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(PG_URL, connect_args={"server_settings": {"search_path": schema}})
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


async def load_resolved(engine: AsyncEngine, r: Resolved, ws: str = WS) -> dict[int, str]:
    """Insert a resolved conformance case as rows; returns db profile id -> case profile id.

    Each user gets a profile; each anonymous id gets its own profile, which for a linked
    anonymous id is merged into the user's (canonical_id = the user's profile). Events
    carrying only an anonymous id stay on that anonymous profile and trait rows stay on
    the profile that received them, so the SQL must resolve merges itself.
    """
    users = sorted({e["user_id"] for e in r.events if e.get("user_id")})
    anons = sorted({e["anonymous_id"] for e in r.events if e.get("anonymous_id")})
    ids: dict[str, int] = {}  # "u:<user>" / "a:<anon>" -> profile row id
    rows: list[dict[str, Any]] = []
    for uid in users:
        ids[f"u:{uid}"] = len(rows) + 1
        rows.append({"profile_id": len(rows) + 1, "canonical_id": len(rows) + 1})
    for anon in anons:
        pid = len(rows) + 1
        ids[f"a:{anon}"] = pid
        owner = r.anon_owner.get(anon)
        canonical = ids[f"u:{owner}"] if owner else pid
        rows.append(
            {
                "profile_id": pid,
                "canonical_id": canonical,
                "merged_at_us": r.now_us if owner else None,
            }
        )
    for row in rows:
        row.update(workspace_id=ws, created_at_us=0)
        row.setdefault("merged_at_us", None)

    def row_of(ev: dict[str, Any]) -> int:
        return ids[f"u:{ev['user_id']}"] if ev.get("user_id") else ids[f"a:{ev['anonymous_id']}"]

    ev_rows = []
    trait_rows: dict[tuple[int, str], dict[str, Any]] = {}
    for ev in r.events:
        pid = row_of(ev)
        ev_rows.append(
            {
                "seq": ev["seq"],
                "workspace_id": ws,
                "message_id": ev["message_id"],
                "type": ev["type"],
                "name": ev.get("event") if ev["type"] == "track" else ev.get("name"),
                "profile_id": pid,
                "user_id": ev.get("user_id"),
                "anonymous_id": ev.get("anonymous_id"),
                "group_id": ev.get("group_id"),
                "timestamp_us": ev["timestamp_us"],
                "received_at_us": ev["seq"],
                "properties": ev.get("properties"),
                "traits": ev.get("traits"),
            }
        )
        if ev["type"] == "identify":
            for k, v in (ev.get("traits") or {}).items():
                cur = trait_rows.get((pid, k))
                if cur is None or (cur["timestamp_us"], cur["seq"]) < (
                    ev["timestamp_us"],
                    ev["seq"],
                ):
                    trait_rows[(pid, k)] = {
                        "profile_id": pid,
                        "key": k,
                        "workspace_id": ws,
                        "value": v,
                        "timestamp_us": ev["timestamp_us"],
                        "seq": ev["seq"],
                    }
    ident_rows = [
        {
            "workspace_id": ws,
            "id_type": "user_id" if k[0] == "u" else "anonymous_id",
            "id_value": k[2:],
            "profile_id": pid,
            "first_seen_us": 0,
        }
        for k, pid in ids.items()
    ]
    async with engine.begin() as conn:
        await conn.execute(profiles.insert(), rows)
        await conn.execute(identities.insert(), ident_rows)
        await conn.execute(events.insert(), ev_rows)
        # A null value is a tombstone: store SQL NULL (none_as_null is off, so pass null()).
        # No rows at all (a case without identify calls) is no insert: an empty list
        # would be one INSERT of default values.
        if trait_rows:
            await conn.execute(
                profile_traits.insert(),
                [
                    {**t, "value": t["value"] if t["value"] is not None else sa.null()}
                    for t in trait_rows.values()
                ],
            )
    if engine.dialect.name == "postgresql":
        # A bulk load leaves no statistics until autovacuum runs; without them the
        # planner assumes one row per table and picks nested loops for funnels.
        async with engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE profiles, identities, events, profile_traits"))
    out = {}
    for key, pid in ids.items():
        if key.startswith("u:"):
            out[pid] = key[2:]
        elif not r.anon_owner.get(key[2:]):
            out[pid] = f"anon:{key[2:]}"
    return out


async def check_sql_computed(
    engine: AsyncEngine, case: dict[str, Any], r: Resolved, names: dict[int, str]
) -> None:
    """Evaluate every computed trait of `case` in SQL, assert the values equal the
    expected ones and store them for the audiences that read them."""
    bad = []
    for key, raw in case["computed_traits"].items():
        async with engine.connect() as conn:
            values = await evaluate_computed_trait(
                conn, parse_computed_trait(raw), workspace_id=WS, now_us=r.now_us
            )
        assert set(values) == set(names)
        bad += [
            (key, names[p], v, case["expected"]["computed"][names[p]][key])
            for p, v in values.items()
            if not close(v, case["expected"]["computed"][names[p]][key])
        ]
        await store_computed(engine, key, values)
    assert not bad, f"{len(bad)} computed values differ, e.g. {bad[:5]}"


async def store_computed(
    engine: AsyncEngine, key: str, values: dict[int, Any], ws: str = WS
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            seg.computed_trait_values.insert(),
            [
                {
                    "workspace_id": ws,
                    "profile_id": pid,
                    "key": key,
                    "value": v if v is not None else sa.null(),
                    "computed_at_us": 0,
                }
                for pid, v in values.items()
            ],
        )


async def store_members(engine: AsyncEngine, key: str, members: set[int], ws: str = WS) -> None:
    async with engine.begin() as conn:
        res = await conn.execute(
            seg.audiences.insert().values(
                workspace_id=ws,
                key=key,
                name=key,
                current_version=1,
                backfill=True,
                account_level=False,
                created_at_us=0,
                updated_at_us=0,
            )
        )
        aid = res.inserted_primary_key[0]
        if members:
            await conn.execute(
                seg.memberships.insert(),
                [
                    {"workspace_id": ws, "audience_id": aid, "profile_id": p, "entered_at_us": 0}
                    for p in members
                ],
            )
