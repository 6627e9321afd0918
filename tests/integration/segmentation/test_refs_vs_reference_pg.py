"""Property, on Postgres: dotted trait names (trait conditions and event filters that
compare with a trait) and computed traits whose filters compare with a trait agree with
the reference evaluator, on the random histories of test_sql_vs_reference (which holds
SQLite to the same and covers the rest of the language)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.language import parse_audience, parse_computed_trait
from services.segmentation.reference import compute_trait, evaluate
from services.segmentation.sql import compile_audience, compile_computed_trait
from tests.integration.segmentation.sqlsupport import postgres_engine
from tests.integration.segmentation.test_sql_vs_reference import (
    NOW,
    _ws_counter,
    computed_defs,
    histories,
    load,
    trait_path_nodes,
)
from tests.unit.segmentation.conformance_cases import close

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pg() -> AsyncIterator[AsyncEngine]:
    async with postgres_engine() as engine:
        yield engine


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(paths=True), definition=trait_path_nodes())
async def test_trait_paths_match_reference_on_postgres(
    pg: AsyncEngine, hist: list[dict[str, Any]], definition: Any
) -> None:
    ws = f"pgpath{next(_ws_counter)}"
    node = parse_audience(definition)
    query = compile_audience(node, workspace_id=ws, now_us=NOW, dialect="postgresql")
    async with pg.begin() as conn:
        data = await conn.run_sync(load, ws, hist)
        got = {r[0] for r in await conn.execute(query)}
    assert got == {pid for pid, p in data.items() if evaluate(node, p, NOW)}, (definition, hist)


# unique_list orders arrays and objects by their JSON text, which differs between the
# dialects (a documented limit), so it is left to the SQLite property test.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hist=histories(paths=True),
    computed=computed_defs(with_ref=True).filter(lambda d: d["type"] != "unique_list"),
)
async def test_computed_trait_refs_match_reference_on_postgres(
    pg: AsyncEngine, hist: list[dict[str, Any]], computed: Any
) -> None:
    ws = f"pgcref{next(_ws_counter)}"
    cdef = parse_computed_trait(computed)
    query = compile_computed_trait(cdef, workspace_id=ws, now_us=NOW, dialect="postgresql")
    async with pg.begin() as conn:
        data = await conn.run_sync(load, ws, hist)
        values = {r[0]: r[1] for r in await conn.execute(query)}
    expected = {pid: compute_trait(cdef, p.events, NOW, p.traits) for pid, p in data.items()}
    assert values.keys() == expected.keys()
    for pid in expected:
        assert close(values[pid], expected[pid]), (computed, pid, values[pid], expected, hist)
