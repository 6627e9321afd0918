"""The stream lag metric reads what a consumer group is behind by, from real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio

from services.shared import metrics
from services.shared.streams import CHANGES_STREAM, EVENTS_STREAM

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A client of the test's empty Redis database."""
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_lag_counts_undelivered_and_unacknowledged_entries(
    redis_client: redis_asyncio.Redis,
) -> None:
    for n in range(5):
        await redis_client.xadd(EVENTS_STREAM, {"n": n})
    await redis_client.xgroup_create(EVENTS_STREAM, "workers", id="0")
    await redis_client.xgroup_create(EVENTS_STREAM, "idle", id="$")
    assert await metrics.read_lag(redis_client, metrics.lag_streams()) == {
        (EVENTS_STREAM, "workers"): 5,
        (EVENTS_STREAM, "idle"): 0,
    }
    read = await redis_client.xreadgroup("workers", "w1", {EVENTS_STREAM: ">"}, count=3)
    # Read but not acknowledged is still behind; acknowledged is not.
    assert (await metrics.read_lag(redis_client, [EVENTS_STREAM]))[(EVENTS_STREAM, "workers")] == 5
    entries = read[0][1]
    await redis_client.xack(EVENTS_STREAM, "workers", entries[0][0])
    assert (await metrics.read_lag(redis_client, [EVENTS_STREAM]))[(EVENTS_STREAM, "workers")] == 4


def test_lag_streams_follow_the_shard_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGEST_SHARDS", raising=False)
    assert metrics.lag_streams() == [EVENTS_STREAM, CHANGES_STREAM]
    monkeypatch.setenv("INGEST_SHARDS", "3")
    assert metrics.lag_streams() == [
        f"{EVENTS_STREAM}:0",
        f"{EVENTS_STREAM}:1",
        f"{EVENTS_STREAM}:2",
        CHANGES_STREAM,
    ]
