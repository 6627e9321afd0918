"""Realtime syncs through the real processes: events sent to ingest enter a realtime
audience in the realtime worker, whose `stream:changes` entries make two sync replicas
(one consumer group) deliver the changes to a webhook that answers a 500 and a 429
first; time passing takes the members out again. Every change reaches the webhook
exactly once, entered before exited for each person, no batch is sent twice except the
refused attempts, and every change entry ends acknowledged."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)
from cryptography.fernet import Fernet

from services.dev_runner import start_processes
from services.shared.clock import US_PER_DAY
from services.shared.streams import CHANGES_STREAM
from services.shared.timestamps import timestamp_from_us
from tests.helpers.audiences import wait_live
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer, wait_serving
from tests.helpers.realtime import realtime_worker
from tests.helpers.servers import as_processes
from tests.helpers.syncs import create_webhook_sync
from tests.helpers.waiting import eventually
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.e2e

CLOCK_KEY = "test:clock"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SECRET = "realtime-hook"
PEOPLE = 8
_ids = itertools.count()

ENV = {
    "CLOCK_REDIS_KEY": CLOCK_KEY,
    "SEGMENTATION_RECONCILE_SECONDS": "0",
    "SYNC_SECRET_KEY": Fernet.generate_key().decode(),
    "SYNC_RETRY_BASE_SECONDS": "0.05",
    "SYNC_REALTIME_SWEEP_SECONDS": "0.5",
    "SYNC_REALTIME_CLAIM_IDLE_MS": "1000",
    "SYNC_REALTIME_CLAIM_EVERY_SECONDS": "0.5",
    "SYNC_SCHEDULER_INTERVAL_SECONDS": "3600",
}


@pytest.fixture
async def shared_clock(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    """Redis with every process's clock at T0."""
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.set(CLOCK_KEY, T0)
    yield client
    await client.aclose()


async def _second_sync(database_url: str, redis_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OTEL_TRACES_EXPORTER": "none",
        "SHUTDOWN_GRACE_SECONDS": "2",
        **ENV,
    }
    [process] = start_processes(env, {"sync": port})
    await wait_serving(f"127.0.0.1:{port}")
    return process, port


async def test_two_replicas_deliver_each_realtime_change_once_in_order(
    database_url: str, redis_url: str, workspace: Any, shared_clock: redis_asyncio.Redis
) -> None:
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    # The webhook fails the first two requests (retried with backoff, Retry-After).
    script = [(500, {}, 0.0), (429, {"Retry-After": "0"}, 0.0)]
    names = ["ingest", "segmentation", "sync"]
    async with (
        webhook(SECRET, script) as receiver,
        as_processes(database_url, redis_url, names, ENV) as addresses,
    ):
        other, _ = await _second_sync(database_url, redis_url)
        channels = {n: grpc.aio.insecure_channel(a) for n, a in addresses.items()}
        try:
            seg = segmentation_pb2_grpc.SegmentationServiceStub(channels["segmentation"])
            sync_api = sync_pb2_grpc.SyncServiceStub(channels["sync"])
            ingest = ingest_pb2_grpc.IngestServiceStub(channels["ingest"])
            definition = {"event": {"name": "Bought", "window": {"within_days": 7}}}
            await seg.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key="buyers", definition=orjson.dumps(definition), realtime=True
                    )
                ),
                metadata=admin,
            )
            await wait_live(seg, "buyers", admin)
            sync = await create_webhook_sync(
                sync_api,
                admin,
                receiver.url,
                SECRET,
                "buyers",
                cadence=sync_pb2.SYNC_CADENCE_REALTIME,
                max_removal_fraction=1.0,
            )

            async def backfilled() -> bool:
                runs = await sync_api.ListSyncRuns(
                    sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=admin
                )
                return any(r.status == "succeeded" for r in runs.runs)

            await eventually(backfilled, 20, "the sweep to backfill the new realtime sync")
            async with realtime_worker(database_url, redis_url, "w1", ENV):
                for i in range(PEOPLE):
                    event = ingest_pb2.Event(
                        type=ingest_pb2.EVENT_TYPE_TRACK,
                        user_id=f"u{i}",
                        event="Bought",
                        message_id=f"rt-sync-{next(_ids)}",
                    )
                    event.timestamp.CopyFrom(timestamp_from_us(T0 - US_PER_DAY))
                    reply = await ingest.Batch(
                        ingest_pb2.BatchRequest(events=[event]), metadata=write
                    )
                    assert reply.accepted == 1

                async def delivered(n: int) -> Any:
                    async def check() -> bool:
                        return len(receiver.applied) >= n

                    return check

                await eventually(await delivered(PEOPLE), 30, "every entry delivered")
                # Six and a half days on, every purchase is older than the 7-day window.
                await shared_clock.set(CLOCK_KEY, T0 + 6 * US_PER_DAY + US_PER_DAY // 2)
                await eventually(await delivered(2 * PEOPLE), 30, "every exit delivered")

                async def acknowledged() -> bool:
                    groups = await shared_clock.xinfo_groups(CHANGES_STREAM)
                    mine = [g for g in groups if g["name"] == b"sync-realtime"]
                    return bool(mine) and mine[0]["pending"] == 0 and mine[0]["lag"] == 0

                await eventually(acknowledged, 20, "every change entry acknowledged")
        finally:
            for channel in channels.values():
                await channel.close()
            other.terminate()
            assert other.wait(timeout=15) == 0

    by_person: dict[str, list[str]] = {}
    for change in receiver.applied:
        by_person.setdefault(change["id"], []).append(change["action"])
    assert by_person == {f"u{i}": ["added", "removed"] for i in range(PEOPLE)}
    seqs = [c["seq"] for c in receiver.applied]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Each batch went out once, plus the two refused attempts of the first one.
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    assert len(keys) == len(set(keys)) + len(script)
