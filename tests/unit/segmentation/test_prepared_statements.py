"""A statement prepared once for a set of definitions (what the realtime worker keeps
between batches) is, with the parameters of an instant and a set of profiles, the very
statement compiled for that instant and those profiles: the same SQL and the same
values, on every conformance case, on both dialects."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect

from services.segmentation import sql
from services.segmentation.language import dependency_layers, parse_audience
from tests.unit.segmentation.conformance_cases import case_by_name, case_names, resolve

DIALECTS: dict[str, Dialect] = {
    "postgresql": postgresql.asyncpg.dialect(),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.aiosqlite.dialect(),  # type: ignore[no-untyped-call]
}
SCOPES = [[3], [9, 2, 5, 2]]


def _same(compiled: Any, prepared: sql.Prepared, now_us: int, scope: list[int], name: str) -> None:
    dialect = DIALECTS[name]
    expected = compiled.compile(dialect=dialect)
    found = prepared.statement.compile(dialect=dialect)
    assert str(found) == str(expected)
    assert found.construct_params(prepared.params(now_us, scope)) == expected.construct_params()


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("case", case_names())
def test_a_prepared_statement_is_the_compiled_one(case: str, dialect: str) -> None:
    raw = case_by_name(case)
    now_us = resolve(raw).now_us
    definitions = {k: parse_audience(v) for k, v in raw["audiences"].items()}
    for keys in dependency_layers(definitions):
        layer = [definitions[k] for k in keys]
        prepared = sql.prepare_audiences(layer, workspace_id="ws", dialect=dialect)
        for at in (now_us, now_us + 86_400_000_000 * 3 + 7):
            for scope in SCOPES:
                compiled = sql.compile_audiences(
                    layer, workspace_id="ws", now_us=at, dialect=dialect, profile_ids=scope
                )
                _same(compiled, prepared, at, scope, dialect)
    for definition in raw.get("computed_traits", {}).values():
        prepared = sql.prepare_computed_trait(definition, workspace_id="ws", dialect=dialect)
        for scope in SCOPES:
            compiled = sql.compile_computed_trait(
                definition, workspace_id="ws", now_us=now_us, dialect=dialect, profile_ids=scope
            )
            _same(compiled, prepared, now_us, scope, dialect)
