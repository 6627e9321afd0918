"""Event syncs read the shards ingest writes: every shard of INGEST_SHARDS unless
SYNC_EVENTS_STREAMS names them."""

from __future__ import annotations

import pytest

from services.sync.settings import SyncSettings

pytestmark = pytest.mark.unit


def test_event_syncs_read_every_shard_ingest_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_EVENTS_STREAMS", raising=False)
    monkeypatch.delenv("INGEST_SHARDS", raising=False)
    assert SyncSettings.from_env().events_streams == ("stream:events",)
    monkeypatch.setenv("INGEST_SHARDS", "4")
    assert SyncSettings.from_env().events_streams == tuple(f"stream:events:{k}" for k in range(4))
    monkeypatch.setenv("SYNC_EVENTS_STREAMS", "stream:events:1,stream:events:3")
    assert SyncSettings.from_env().events_streams == ("stream:events:1", "stream:events:3")
