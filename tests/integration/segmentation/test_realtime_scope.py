"""The batch evaluator restricted to a set of profiles (what the realtime worker runs
per batch: ``profile_ids``) gives each of those profiles exactly the answer of the
unrestricted evaluation, on every conformance case and our own cases, Postgres and
SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation import sql
from services.segmentation.language import dependency_layers, parse_audience
from tests.integration.segmentation.sqlsupport import (
    WS,
    load_resolved,
    postgres_engine,
    sqlite_engine,
    store_computed,
    store_members,
)
from tests.unit.segmentation.conformance_cases import case_by_name, case_names, resolve

pytestmark = pytest.mark.integration


async def _members(
    engine: AsyncEngine, layer: list[object], now_us: int, scope: list[int] | None
) -> list[set[int]]:
    async with engine.connect() as conn:
        query = sql.compile_audiences(
            layer, workspace_id=WS, now_us=now_us, dialect=conn.dialect.name, profile_ids=scope
        )
        rows = (await conn.execute(query)).all()
    return [{row[0] for row in rows if row[i + 1]} for i in range(len(layer))]


async def _check(engine: AsyncEngine, name: str) -> None:
    case = case_by_name(name)
    r = resolve(case)
    names = await load_resolved(engine, r)
    profiles = sorted(names)
    # Two halves, interleaved, so each holds profiles with and without events.
    scopes = [profiles[0::2], profiles[1::2]]
    for key, raw in case.get("computed_traits", {}).items():
        async with engine.connect() as conn:
            everyone = await sql.evaluate_computed_trait(
                conn, raw, workspace_id=WS, now_us=r.now_us
            )
            for scope in scopes:
                some = await sql.evaluate_computed_trait(
                    conn, raw, workspace_id=WS, now_us=r.now_us, profile_ids=scope
                )
                assert some == {p: everyone[p] for p in scope}, (key, scope)
        await store_computed(engine, key, everyone)
    defs = {k: parse_audience(v) for k, v in case["audiences"].items()}
    for keys in dependency_layers(defs):
        layer = [defs[k] for k in keys]
        everyone = await _members(engine, layer, r.now_us, None)
        for scope in scopes:
            some = await _members(engine, layer, r.now_us, scope)
            assert some == [m & set(scope) for m in everyone], (keys, scope)
        for key, members in zip(keys, everyone, strict=True):
            await store_members(engine, key, members)


@pytest.mark.parametrize("name", case_names())
async def test_postgres(name: str) -> None:
    async with postgres_engine() as engine:
        await _check(engine, name)


@pytest.mark.parametrize("name", case_names())
async def test_sqlite(name: str, tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine, name)
