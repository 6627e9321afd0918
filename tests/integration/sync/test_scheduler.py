"""Hourly syncs run when due, by exactly one of several replicas."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from audiences.v1 import sync_pb2

from services.shared.clock import FixedClock
from services.shared.server import Resources
from services.sync.readmodel import ChangeLog
from services.sync.runner import SyncRunner
from services.sync.scheduler import Scheduler
from services.sync.secrets import SecretBox
from services.sync.settings import SyncSettings
from services.sync.store import SyncStore
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import get_sync, webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "scheduler-secret"
HOUR_US = 3_600_000_000


def _replica(resources: Resources, name: str) -> Scheduler:
    """A scheduler as a separate replica would run it (its own runner and claims)."""
    settings = replace(SyncSettings.from_env(), replica=name)
    store = SyncStore(resources.engine, SecretBox(settings.secret_key))
    runner = SyncRunner(store, ChangeLog(resources.engine), settings, resources.clock)
    return Scheduler(store, runner, resources.clock, settings)


async def test_replicas_run_a_due_sync_once_and_again_an_hour_later(
    api: SyncApi, resources: Resources, clock: FixedClock
) -> None:
    audience = await api.log.audience("hourly")
    pids = [await api.log.profile(email=f"h{i}@example.com") for i in range(6)]
    for pid in pids[:4]:
        await api.log.change(audience, pid, entered=True)
    replicas = [_replica(resources, name) for name in ("replica-a", "replica-b", "replica-c")]
    async with webhook(SECRET) as receiver:
        sync = await webhook_sync(api, receiver.url, SECRET, "hourly", batch_size=1)
        sync.cadence = sync_pb2.SYNC_CADENCE_HOURLY
        sync = await api.stub.UpdateSync(
            sync_pb2.UpdateSyncRequest(sync=sync), metadata=api.metadata
        )
        assert sync.next_run_at.ToMicroseconds() == clock.now_us()

        runs = await asyncio.gather(*(r.tick() for r in replicas))
        assert sorted(len(r) for r in runs) == [0, 0, 1]
        # Each batch went out once: no replica re-sent what another delivered.
        keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
        assert len(keys) == len(set(keys)) == 4
        after = await get_sync(api, sync.id)
        assert after.next_run_at.ToMicroseconds() == clock.now_us() + HOUR_US

        for pid in pids[4:]:
            await api.log.change(audience, pid, entered=True)
        assert [await r.tick() for r in replicas] == [[], [], []]  # not due yet
        clock.set(clock.now_us() + HOUR_US)
        runs = await asyncio.gather(*(r.tick() for r in replicas))
        [ran] = [r for found in runs for r in found]
        assert (ran.added, ran.from_cursor, ran.to_cursor) == (2, 4, 6)
        assert [c["id"] for c in receiver.applied] == [f"h{i}@example.com" for i in range(6)]


async def test_a_sync_being_run_cannot_be_run_twice(api: SyncApi, resources: Resources) -> None:
    audience = await api.log.audience("busy")
    pid = await api.log.profile(email="x@example.com")
    await api.log.change(audience, pid, entered=True)
    sync = await webhook_sync(api, "http://127.0.0.1:9/", SECRET, "busy")
    store = SyncStore(resources.engine, SecretBox(None))
    assert await store.claim(
        api.log.ws,
        sync.id,
        "someone-else/1",
        resources.clock.now_us(),
        resources.clock.now_us() + HOUR_US,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=api.metadata)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "another replica" in refused.value.details()
