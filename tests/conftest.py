"""Fixtures on real servers: a migrated Postgres database per test (cloned from a
template migrated once per session), a flushed Redis database per test, process
Resources on them, and a workspace with keys of every scope."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as redis_asyncio

from services.shared.clock import FixedClock
from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.helpers import backends

# Generated code and services import from the repo root when run without install.
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")


@pytest.fixture(scope="session")
async def template_database() -> AsyncIterator[str]:
    """A database migrated to every head, used as the template of per-test databases."""
    url = await backends.create_database()
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    yield url.rsplit("/", 1)[1]
    await backends.drop_database(url)


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    """An isolated, migrated Postgres database for one test."""
    url = await backends.create_database(template=template_database)
    yield url
    await backends.drop_database(url)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A real Redis database index, empty at the start of the test (emptied
    asynchronously: a synchronous FLUSHDB of a large db stalls every other client)."""
    url = backends.test_redis_url()
    client = redis_asyncio.Redis.from_url(url)
    await client.flushdb(asynchronous=True)
    yield url
    await client.flushdb(asynchronous=True)
    await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, api_key_cache_seconds=0)


@pytest.fixture
def clock() -> FixedClock:
    """A settable clock, fixed at 2025-01-01T00:00:00Z."""
    return FixedClock(1_735_689_600_000_000)


@pytest.fixture
async def resources(settings: Settings, clock: FixedClock) -> AsyncIterator[Resources]:
    """Process resources (engine, Redis, key store) on the per-test servers."""
    opened = await Resources.open(settings, "test", clock=clock)
    yield opened
    await opened.close()


@dataclass(frozen=True)
class WorkspaceKeys:
    workspace_id: str
    admin: str
    ingest: str
    profile: str


async def make_workspace(resources: Resources, name: str) -> WorkspaceKeys:
    """A workspace with one key per scope."""
    workspace_id, _, admin = await resources.keys.create_workspace(name)
    _, ingest = await resources.keys.create_key(workspace_id, "ingest", ["ingest:write"])
    _, profile = await resources.keys.create_key(workspace_id, "profile", ["profile:read"])
    return WorkspaceKeys(workspace_id, admin, ingest, profile)


@pytest.fixture
async def workspace(resources: Resources) -> WorkspaceKeys:
    return await make_workspace(resources, "acme")
