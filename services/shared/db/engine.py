"""The async SQLAlchemy engine, the one way code reaches the database.

The same code runs on Postgres (asyncpg, production) and SQLite (aiosqlite, embedded).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.ext.asyncio
from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker


def create_engine(database_url: str, pool_size: int = 10) -> AsyncEngine:
    """An async engine for `database_url` with settings suited to its backend."""
    # Looked up on the module at call time so OpenTelemetry's wrapper applies.
    create_async_engine = sqlalchemy.ext.asyncio.create_async_engine
    # Parameters are people's data (emails, traits): SQLAlchemy leaves them out of
    # every error message, so no log line or trace event carries them.
    if database_url.startswith("sqlite"):
        engine = create_async_engine(
            database_url, connect_args={"timeout": 30}, hide_parameters=True
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        database_url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed while the single writer commits.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: AsyncEngine) -> bool:
    """True when the engine talks to Postgres (some statements differ by dialect)."""
    return engine.dialect.name == "postgresql"


def dialect_insert(engine: AsyncEngine | AsyncConnection, table: Table) -> Any:
    """INSERT of the engine's dialect, so ``on_conflict_do_nothing/update`` is available
    on Postgres and SQLite alike."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
