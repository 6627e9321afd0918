"""The shared Redis calls that differ on a Redis Cluster, against a real three-node
cluster: the audience settings' transaction (two keys of one workspace) and a read of
several stream shards (on different slots) that waits for new entries. (Ingest's
scripts, GetProfile's read and the realtime worker: tests/e2e/test_redis_cluster.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.segmentation.hot import HotState
from services.shared import hotstate, streams
from services.shared.redis import create_redis, is_cluster
from tests.helpers.redis_cluster import redis_cluster, slot_of

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster_redis() -> AsyncIterator[Redis]:
    async with redis_cluster() as nodes:
        client = create_redis(nodes.url, cluster=True)
        try:
            yield client
        finally:
            await client.aclose()


async def test_audience_settings_transaction(cluster_redis: Redis) -> None:
    assert is_cluster(cluster_redis)
    version = await HotState(cluster_redis).publish_audience_config(
        "ws1", {"context": [], "holdouts": {"a": 0.1}}
    )
    assert await cluster_redis.hget(hotstate.audience_config_key("ws1"), "version") == (
        version.encode()
    )
    assert await cluster_redis.hgetall(hotstate.holdouts_key("ws1")) == {b"a": b"0.1"}


async def test_reading_shards_on_several_slots_waits_for_new_entries(
    cluster_redis: Redis,
) -> None:
    shards = streams.event_streams(4)
    assert len({slot_of(s) for s in shards}) == 4
    for stream in shards:
        await streams.ensure_group(cluster_redis, stream, "g")
    assert await streams.read_groups(cluster_redis, shards, "g", "c", block_ms=None) == []
    # The reads of the other shards wait their full block_ms: keep it short.
    waiting = asyncio.create_task(
        streams.read_groups(cluster_redis, shards, "g", "c", block_ms=500)
    )
    await streams.publish(cluster_redis, shards[2], [("1-0", {"a": "1"})])
    read = await asyncio.wait_for(waiting, 10)
    assert [(stream, entry.id) for stream, entry in read] == [(shards[2], "1-0")]
    await streams.publish(cluster_redis, shards[0], [("1-0", {"a": "1"})])
    await streams.publish(cluster_redis, shards[3], [("1-0", {"a": "1"})])
    read = await streams.read_groups(cluster_redis, shards, "g", "c", block_ms=1000)
    assert sorted(stream for stream, _ in read) == [shards[0], shards[3]]
