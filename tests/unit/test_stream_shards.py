"""Stream shard names: one shard keeps the stream name a deployment already has, and
each shard's stream and publish cursor share one Redis Cluster slot (the ingest append
script touches both)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from services.shared import streams

pytestmark = pytest.mark.unit


def test_one_shard_is_the_unsharded_stream_and_cursor() -> None:
    assert streams.event_streams(1) == (streams.EVENTS_STREAM,)
    assert streams.event_stream_cursor(0, 1) == "{stream:events}:cursor"


@pytest.mark.parametrize("shards", [1, 2, 4, 16])
def test_each_shards_stream_and_cursor_share_a_slot(shards: int) -> None:
    names = streams.event_streams(shards)
    assert len(set(names)) == shards
    for shard, stream in enumerate(names):
        cursor = streams.event_stream_cursor(shard, shards)
        assert key_slot(stream.encode()) == key_slot(cursor.encode())


def test_shard_count_comes_from_ingest_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_SHARDS", "4")
    assert streams.event_streams() == tuple(f"stream:events:{k}" for k in range(4))
    monkeypatch.setenv("INGEST_SHARDS", "0")
    with pytest.raises(ValueError):
        streams.shard_count()
