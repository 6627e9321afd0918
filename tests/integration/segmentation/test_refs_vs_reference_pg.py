"""Property, on Postgres: dotted trait names (trait conditions and event filters that
compare with a trait) and computed traits whose filters compare with a trait agree with
the reference evaluator, on the random histories of test_sql_vs_reference (which holds
SQLite to the same and covers the rest of the language)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.language import parse_audience, parse_computed_trait
from services.segmentation.reference import ProfileData, compute_trait, evaluate
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

PG = "postgresql"


@pytest.fixture(scope="module")
async def pg() -> AsyncIterator[AsyncEngine]:
    async with postgres_engine() as engine:
        yield engine


async def _run(
    pg: AsyncEngine, hist: list[dict[str, Any]], compile_for: Callable[[str], Any]
) -> tuple[dict[int, ProfileData], list[Any]]:
    """Load `hist` under a fresh workspace; (the reference view of each profile, the
    rows of the statement `compile_for(workspace)`)."""
    ws = f"pg{next(_ws_counter)}"
    async with pg.begin() as conn:
        data = await conn.run_sync(load, ws, hist)
        rows = list(await conn.execute(compile_for(ws)))
    return data, rows


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(paths=True), definition=trait_path_nodes())
async def test_trait_paths_match_reference_on_postgres(
    pg: AsyncEngine, hist: list[dict[str, Any]], definition: Any
) -> None:
    node = parse_audience(definition)
    data, rows = await _run(
        pg, hist, lambda ws: compile_audience(node, workspace_id=ws, now_us=NOW, dialect=PG)
    )
    got = {r[0] for r in rows}
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
    cdef = parse_computed_trait(computed)
    data, rows = await _run(
        pg, hist, lambda ws: compile_computed_trait(cdef, workspace_id=ws, now_us=NOW, dialect=PG)
    )
    values = {r[0]: r[1] for r in rows}
    expected = {pid: compute_trait(cdef, p.events, NOW, p.traits) for pid, p in data.items()}
    assert values.keys() == expected.keys()
    for pid in expected:
        assert close(values[pid], expected[pid]), (computed, pid, values[pid], expected, hist)
