"""Our own cases (tests/unit/segmentation/own_cases.py) through sql.py on SQLite and
Postgres: the batch path must give the computed values and members the reference gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.language import dependency_order, parse_audience
from services.segmentation.sql import evaluate_audience
from tests.integration.segmentation.sqlsupport import (
    WS,
    check_sql_computed,
    load_resolved,
    postgres_engine,
    sqlite_engine,
    store_members,
)
from tests.unit.segmentation.conformance_cases import resolve
from tests.unit.segmentation.own_cases import OWN_CASE_NAMES, own_case

pytestmark = pytest.mark.integration


async def _check(engine: AsyncEngine, name: str) -> None:
    case = own_case(name)
    r = resolve(case)
    names = await load_resolved(engine, r)
    expected = case["expected"]
    await check_sql_computed(engine, case, r, names)
    got = {}
    for key in dependency_order(case["audiences"]):
        async with engine.connect() as conn:
            members = await evaluate_audience(
                conn, parse_audience(case["audiences"][key]), workspace_id=WS, now_us=r.now_us
            )
        got[key] = sorted(names[p] for p in members)
        await store_members(engine, key, members)
    assert got == expected["members"]


@pytest.mark.parametrize("name", OWN_CASE_NAMES)
async def test_sqlite(name: str, tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine, name)


@pytest.mark.parametrize("name", OWN_CASE_NAMES)
async def test_postgres(name: str) -> None:
    async with postgres_engine() as engine:
        await _check(engine, name)
