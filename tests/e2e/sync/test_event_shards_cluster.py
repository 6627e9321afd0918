"""Event syncs on a Redis Cluster: ingest and sync as processes with REDIS_CLUSTER=1 and
two stream shards (on different slots, so the sync reads each shard on its own node);
mid-run one shard's slot (its stream, cursor and the sync's consumer group) moves to
another node. Every event reaches the webhook exactly once, each person's in order,
and every shard's entries end acknowledged."""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import ingest_pb2, ingest_pb2_grpc, sync_pb2_grpc
from cryptography.fernet import Fernet

from services.shared import streams
from services.sync.runner import event_group
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.redis_cluster import CLUSTER_SHARDS, RedisClusterNodes, slot_of
from tests.helpers.servers import as_processes
from tests.helpers.syncs import create_realtime_event_sync, create_webhook_destination
from tests.helpers.waiting import eventually
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.e2e

SECRET = "cluster-events"
PEOPLE = 12
STEPS = 10
ENV = {
    "SYNC_SECRET_KEY": Fernet.generate_key().decode(),
    "SYNC_EVENTS_POLL_SECONDS": "0.05",
    "SYNC_SCHEDULER_INTERVAL_SECONDS": "3600",
}


def _step(step: int) -> ingest_pb2.BatchRequest:
    """One track event of every person."""
    return ingest_pb2.BatchRequest(
        events=[
            ingest_pb2.Event(
                message_id=f"m-p{i}-{step}",
                type=ingest_pb2.EVENT_TYPE_TRACK,
                user_id=f"p{i}",
                event="Step",
                properties=orjson.dumps({"step": step}),
            )
            for i in range(PEOPLE)
        ]
    )


async def test_event_sync_reads_every_shard_through_a_slot_move(
    database_url: str, cluster: RedisClusterNodes, cluster_workspace: WorkspaceKeys
) -> None:
    admin, write = bearer(cluster_workspace.admin), bearer(cluster_workspace.ingest)
    shards = streams.event_streams(CLUSTER_SHARDS)
    async with (
        webhook(SECRET) as receiver,
        as_processes(database_url, cluster.url, ["ingest", "sync"], ENV) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
        grpc.aio.insecure_channel(addresses["sync"]) as sync_channel,
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        stub = sync_pb2_grpc.SyncServiceStub(sync_channel)
        destination = await create_webhook_destination(
            stub, admin, receiver.url, SECRET, batch_size=7
        )
        sync = await create_realtime_event_sync(stub, admin, destination.id)

        for step in range(STEPS // 2):
            assert (await ingest.Batch(_step(step), metadata=write)).accepted == PEOPLE

        async def some_forwarded() -> bool:
            return len(receiver.applied) > 0

        await eventually(some_forwarded, 30, "the first events forwarded")
        stream_slot = slot_of(shards[1])
        to = next(p for p in cluster.ports if p != cluster.owner(stream_slot))
        moved = await asyncio.to_thread(cluster.move_slot, stream_slot, to)
        assert moved >= 1, "the shard's slot held its stream"
        assert cluster.owner(stream_slot) == to

        for step in range(STEPS // 2, STEPS):
            assert (await ingest.Batch(_step(step), metadata=write)).accepted == PEOPLE

        async def forwarded() -> bool:
            return len(receiver.applied) >= PEOPLE * STEPS

        await eventually(forwarded, 60, "every event forwarded")

        client = redis_asyncio.RedisCluster.from_url(cluster.url)
        try:

            async def acknowledged() -> bool:
                for stream in shards:
                    groups = await client.xinfo_groups(stream)
                    mine = [g for g in groups if g["name"].decode() == event_group(sync.id)]
                    if not mine or mine[0]["pending"] or mine[0]["lag"]:
                        return False
                return True

            await eventually(acknowledged, 20, "every shard's entries acknowledged")
            lengths = [await client.xlen(stream) for stream in shards]
        finally:
            await client.aclose()

    assert all(lengths), lengths  # the people are spread over both shards
    applied = [e["message_id"] for e in receiver.applied]
    sent = {f"m-p{i}-{step}" for i in range(PEOPLE) for step in range(STEPS)}
    assert len(applied) == len(set(applied)) and set(applied) == sent  # each exactly once
    steps: dict[str, list[int]] = {}
    for event in receiver.applied:
        steps.setdefault(event["id"], []).append(event["properties"]["step"])
    assert steps == {f"p{i}": list(range(STEPS)) for i in range(PEOPLE)}
