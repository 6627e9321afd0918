"""Every conformance case loaded into SQLite and Postgres, evaluated by sql.py: one
audience at a time, and all of a dependency layer together in one rollup pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.segmentation.language import (
    dependency_layers,
    dependency_order,
    parse_audience,
)
from services.segmentation.sql import (
    evaluate_audience,
    evaluate_audiences,
)
from tests.integration.segmentation.sqlsupport import (
    WS,
    check_sql_computed,
    load_resolved,
    postgres_engine,
    sqlite_engine,
    store_members,
)
from tests.unit.segmentation.conformance_cases import case_by_name, case_names, resolve

pytestmark = pytest.mark.integration


async def _check(engine, name: str, rollup: bool = False) -> None:
    case = case_by_name(name)
    r = resolve(case)
    expected = case["expected"]
    names = await load_resolved(engine, r)
    assert set(names.values()) == set(expected["computed"])

    await check_sql_computed(engine, case, r, names)

    defs = {k: parse_audience(v) for k, v in case["audiences"].items()}
    wrong = {}
    if rollup:
        layers = dependency_layers(defs)
    else:
        layers = [[key] for key in dependency_order(defs)]
    for layer in layers:
        async with engine.connect() as conn:
            if rollup:
                results = await evaluate_audiences(
                    conn, [defs[k] for k in layer], workspace_id=WS, now_us=r.now_us
                )
            else:
                results = [
                    await evaluate_audience(conn, defs[layer[0]], workspace_id=WS, now_us=r.now_us)
                ]
        for key, members in zip(layer, results, strict=True):
            got = {names[p] for p in members}
            want = set(expected["members"][key])
            if got != want:
                wrong[key] = (sorted(got - want)[:5], sorted(want - got)[:5])
            await store_members(engine, key, members)
    assert not wrong, f"audiences differ (extra, missing): {wrong}"


@pytest.mark.parametrize("name", case_names())
async def test_sqlite(name: str, tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine, name)


@pytest.mark.parametrize("name", case_names())
async def test_postgres(name: str) -> None:
    async with postgres_engine() as engine:
        await _check(engine, name)


@pytest.mark.parametrize("name", case_names())
async def test_sqlite_rollup(name: str, tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine, name, rollup=True)


@pytest.mark.parametrize("name", case_names())
async def test_postgres_rollup(name: str) -> None:
    async with postgres_engine() as engine:
        await _check(engine, name, rollup=True)
