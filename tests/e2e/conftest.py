"""Fixtures of the end-to-end tests that run the services on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.shared.config import Settings
from services.shared.server import Resources
from tests.conftest import WorkspaceKeys, make_workspace
from tests.helpers.redis_cluster import CLUSTER_SHARDS, RedisClusterNodes, redis_cluster


@pytest.fixture
async def cluster(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisClusterNodes]:
    """A fresh three-node cluster; this process and the services it starts use it."""
    monkeypatch.setenv("REDIS_CLUSTER", "1")
    monkeypatch.setenv("INGEST_SHARDS", str(CLUSTER_SHARDS))
    async with redis_cluster() as nodes:
        yield nodes


@pytest.fixture
async def cluster_workspace(database_url: str, cluster: RedisClusterNodes) -> WorkspaceKeys:
    """A workspace and its keys, created through the cluster."""
    settings = Settings(database_url=database_url, redis_url=cluster.url, api_key_cache_seconds=0)
    resources = await Resources.open(settings, "test")
    try:
        return await make_workspace(resources, "acme")
    finally:
        await resources.close()
