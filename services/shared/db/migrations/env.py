"""Alembic environment: runs migrations on the caller's connection or on DATABASE_URL.

Every service's tables register on the shared metadata, so importing the service table
modules here gives autogenerate the whole schema.
"""

from __future__ import annotations

import asyncio
import importlib

from alembic import context
from sqlalchemy.engine import Connection

from services.shared.config import Settings
from services.shared.db.engine import create_engine
from services.shared.db.tables import metadata

# Service-owned tables (each service keeps its own tables.py on the shared metadata).
for module in (
    "services.segmentation.tables",
    "services.sync.tables",
    "services.prediction.tables",
):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        pass

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    asyncio.run(_run_async(url))
