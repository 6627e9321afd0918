"""Migrations apply and roll back cleanly on Postgres and on SQLite."""

import pytest
from sqlalchemy import inspect

from services.segmentation.tables import metadata
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from tests.helpers import backends

pytestmark = pytest.mark.integration

CORE_TABLES = {"workspaces", "api_keys", "events", "identities", "profiles", "profile_traits"}


async def _tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def _up_down_up(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        assert CORE_TABLES <= await _tables(engine)
        await migrate.downgrade(engine)
        assert await _tables(engine) <= {"alembic_version"}
        await migrate.upgrade(engine)
        assert CORE_TABLES <= await _tables(engine)
    finally:
        await engine.dispose()


async def test_postgres_up_down_up() -> None:
    url = await backends.create_database()
    try:
        await _up_down_up(url)
    finally:
        await backends.drop_database(url)


async def test_sqlite_up_down_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    await _up_down_up(f"sqlite+aiosqlite:///{tmp_path}/audiences.db")


def _declared_indexes(table: str) -> dict[str, list[str]]:
    return {ix.name: [c.name for c in ix.columns] for ix in metadata.tables[table].indexes}


@pytest.mark.parametrize("table", ["memberships", "membership_changes"])
async def test_postgres_head_has_the_declared_indexes(table: str) -> None:
    """The migrations build exactly the indexes the table modules declare (the batch
    writers and the readers are written, and measured, against those)."""
    url = await backends.create_database()
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            found = await connection.run_sync(lambda c: inspect(c).get_indexes(table))
        assert {ix["name"]: list(ix["column_names"]) for ix in found} == _declared_indexes(table)
    finally:
        await engine.dispose()
        await backends.drop_database(url)
