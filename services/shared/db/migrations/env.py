"""Alembic environment: runs migrations on the caller's connection or on DATABASE_URL.

Every service's tables register on the shared metadata; ``load_metadata`` imports every
table module there is, so autogenerate sees the whole schema (and a module that fails to
import fails the migration rather than hiding its tables).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from services.shared.config import Settings
from services.shared.db.engine import create_engine
from services.shared.db.migrate import autogenerate_filters, load_metadata

config = context.config
target_metadata = load_metadata()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch ALTERs
        compare_type=True,
        **autogenerate_filters(connection),
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
