"""Apply or roll back Alembic migrations programmatically.

Each service may own a branch of migrations (its own tables); `heads` applies them all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import SchemaItem

from services.shared.db.tables import metadata

MIGRATIONS = Path(__file__).parent / "migrations"
# services/ (this file is services/shared/db/migrate.py).
_SERVICES = Path(__file__).resolve().parents[2]


def table_modules() -> list[str]:
    """Every service's table modules (``services/<service>/tables.py`` and
    ``*_tables.py``), found on disk so a new one cannot be left out of autogenerate."""
    found = {*_SERVICES.glob("*/tables.py"), *_SERVICES.glob("*/*_tables.py")}
    return sorted(".".join(p.relative_to(_SERVICES.parent).with_suffix("").parts) for p in found)


def load_metadata() -> MetaData:
    """The shared metadata with every service's tables registered on it. An import error
    propagates: a schema missing a table would make autogenerate drop it."""
    for module in table_modules():
        importlib.import_module(module)
    return metadata


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at the shared migrations folder."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def autogenerate_filters(connection: Connection) -> dict[str, Any]:
    """Alembic's ``include_name`` and ``include_object`` for this database: leave out
    Postgres partitions (``events_y2025``...), which the migrations create by year and no
    table module declares, and schema items declared for another dialect only
    (``ddl_if(dialect=...)``), which Alembic does not read."""
    dialect = connection.dialect.name
    partitions: set[str] = set()
    if dialect == "postgresql":
        rows = connection.execute(text("SELECT relname FROM pg_class WHERE relispartition"))
        partitions = {row[0] for row in rows}

    def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
        return not (type_ == "table" and name in partitions)

    def include_object(
        item: SchemaItem, _name: str | None, _type: str, _reflected: bool, _compare_to: object
    ) -> bool:
        only = getattr(item, "_ddl_if", None)
        return only is None or only.dialect is None or only.dialect == dialect

    return {"include_name": include_name, "include_object": include_object}


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> None:
    """Migrate the engine's database up to `revision` (default: every head)."""
    await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    """Roll the engine's database back to `revision` (default: empty)."""
    await _run(engine, lambda config: command.downgrade(config, revision))


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    def on_connection(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config)

    async with engine.begin() as connection:
        await connection.run_sync(on_connection)
