"""Real Postgres and Redis for tests: a migrated template database cloned per test and
a Redis database index flushed per test.

DATABASE_URL / REDIS_URL are honoured when they point at real servers; otherwise the
loopback defaults are used (the embedded SQLite/in-process store is never a stand-in
for the production path).
"""

from __future__ import annotations

import os
import secrets
import socket

import asyncpg

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Tests use their own Redis database index so a developer's db 0 is left alone; under
# pytest-xdist each worker takes the next index (gw0 the base, gw1 base + 1, ...), so
# workers never flush each other's keys.
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
TEST_REDIS_DB = (int(os.environ.get("TEST_REDIS_DB", "13")) + _XDIST_WORKER) % 16


def base_postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgresql") else DEFAULT_PG


def test_redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    url = url if url.startswith("redis") else DEFAULT_REDIS
    return url.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}" if url.count("/") >= 3 else url


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    return url.rsplit("/", 1)[0] + "/" + database


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_database(template: str | None = None) -> str:
    """Create a uniquely named database (optionally from a template); returns its URL."""
    name = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(asyncpg_dsn(base_postgres_url()))
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return with_database(base_postgres_url(), name)


async def drop_database(url: str) -> None:
    """Drop a database made by create_database, closing leftover connections."""
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(asyncpg_dsn(base_postgres_url()))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on loopback right now, never handed out before in this process, and
    owned by this pytest-xdist worker (port % workers == worker index).

    The services bind with SO_REUSEPORT, so two of them given the same port would both
    start and share its traffic instead of failing: a port is handed out once, and
    workers draw from disjoint residues.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    # Rejected ports stay bound until one fits, or the kernel would offer them again.
    held: list[socket.socket] = []
    try:
        while True:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port % workers == _XDIST_WORKER % workers and port not in _handed_out:
                _handed_out.add(port)
                return port
    finally:
        for sock in held:
            sock.close()
