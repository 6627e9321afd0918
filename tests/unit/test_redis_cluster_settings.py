"""REDIS_CLUSTER: which client the services get, and the changes cursor's key on a
cluster (it must share the changes stream's slot: one script writes both)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from services.segmentation.realtime.settings import RealtimeSettings
from services.shared.redis import cluster_mode, create_redis, is_cluster
from services.shared.redis_pipelined import create_pipelined

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "cluster"), [("", False), ("0", False), ("1", True), ("true", True)]
)
def test_redis_cluster_setting(monkeypatch: pytest.MonkeyPatch, value: str, cluster: bool) -> None:
    monkeypatch.setenv("REDIS_CLUSTER", value)
    assert cluster_mode() is cluster
    # Nothing connects until the first command.
    client = create_redis("redis://127.0.0.1:6379/0")
    assert is_cluster(client) is cluster
    assert isinstance(client, RedisCluster if cluster else Redis)
    # GetProfile's single-connection path speaks to one node only.
    assert (create_pipelined("redis://127.0.0.1:6379/0") is None) is cluster


def test_single_node_keeps_the_changes_cursor_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_CLUSTER", raising=False)
    monkeypatch.setenv("REALTIME_CHANGES_CURSOR_KEY", "")
    assert RealtimeSettings.from_env().changes_cursor_key == "realtime:changes:published"


def test_cluster_puts_the_changes_cursor_on_the_streams_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_CLUSTER", "1")
    monkeypatch.delenv("REALTIME_CHANGES_CURSOR_KEY", raising=False)
    settings = RealtimeSettings.from_env()
    assert settings.changes_cursor_key == "{stream:changes}:published"
    assert key_slot(settings.changes_cursor_key.encode()) == key_slot(
        settings.changes_stream.encode()
    )
    monkeypatch.setenv("REALTIME_CHANGES_CURSOR_KEY", "realtime:changes:published")
    with pytest.raises(ValueError, match="slot"):
        RealtimeSettings.from_env()
