"""Our own cases (tests/unit/segmentation/own_cases.py) through sql.py on SQLite and
Postgres: the batch path must give the computed values and members the reference gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.language import dependency_order, parse_audience, parse_computed_trait
from services.segmentation.sql import evaluate_audience, evaluate_computed_trait
from tests.integration.segmentation.sqlsupport import (
    WS,
    load_resolved,
    postgres_engine,
    sqlite_engine,
    store_computed,
    store_members,
)
from tests.unit.segmentation.conformance_cases import close, resolve
from tests.unit.segmentation.own_cases import OWN_CASE_NAMES, own_case

pytestmark = pytest.mark.integration


async def _check(engine: AsyncEngine, name: str) -> None:
    case = own_case(name)
    r = resolve(case)
    names = await load_resolved(engine, r)
    expected = case["expected"]
    bad = []
    for key, raw in case["computed_traits"].items():
        async with engine.connect() as conn:
            values = await evaluate_computed_trait(
                conn, parse_computed_trait(raw), workspace_id=WS, now_us=r.now_us
            )
        assert set(values) == set(names)
        bad += [
            (key, names[p], v, expected["computed"][names[p]][key])
            for p, v in values.items()
            if not close(v, expected["computed"][names[p]][key])
        ]
        await store_computed(engine, key, values)
    assert not bad
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
