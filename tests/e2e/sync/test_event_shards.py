"""Event syncs read every event stream shard: two ingest processes with INGEST_SHARDS=4
and a sync process with the same setting forward every event to a webhook exactly once
and each person's events in order, through a refused first request and a SIGKILL of the
sync process while a batch is in flight (a second process takes over the pending
entries of every shard and re-sends exactly the in-flight batch under its key).

As in test_sigkill.py the kill lands mid-batch, not by timing: the receiver holds one
request open until the process is dead, then applies it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import ingest_pb2, ingest_pb2_grpc, sync_pb2_grpc
from cryptography.fernet import Fernet

from services.dev_runner import start_processes
from services.shared import streams
from services.sync.runner import event_group
from tests.conftest import WorkspaceKeys
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer, wait_serving
from tests.helpers.syncs import create_realtime_event_sync, create_webhook_destination
from tests.helpers.waiting import eventually
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.e2e

SHARDS = 4
SECRET = "event-shards"
SENDERS = 4  # sender n talks to ingest process n % 2
PEOPLE_PER_SENDER = 6
EVENTS_PER_PERSON = 8
HELD_REQUEST = 5  # the first is refused (503), so the fourth batch is held
ENV = {
    "OTEL_TRACES_EXPORTER": "none",
    "SHUTDOWN_GRACE_SECONDS": "2",
    "INGEST_HTTP_PORT": "0",
    "INGEST_SHARDS": str(SHARDS),
    "SYNC_SECRET_KEY": Fernet.generate_key().decode(),
    "SYNC_CLAIM_SECONDS": "1",  # a dead process's claim lapses quickly
    "SYNC_RETRY_BASE_SECONDS": "0.05",
    "SYNC_EVENTS_POLL_SECONDS": "0.05",
    "SYNC_SCHEDULER_INTERVAL_SECONDS": "3600",
}


@contextmanager
def _started(
    database_url: str, redis_url: str, names: list[str]
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """Each named service as its own process; (process, address) each. Stopped on exit
    (SIGTERM, or SIGKILL when a process does not stop)."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, **ENV}
    started = []
    for name in names:
        port = free_port()
        (process,) = start_processes(env, {name: port})
        started.append((process, f"127.0.0.1:{port}"))
    try:
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.terminate()
        for process, _ in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _person(sender: int, i: int) -> str:
    return f"u{sender}-{i}"


def _batch(sender: int, step: int) -> ingest_pb2.BatchRequest:
    """Step `step` of every person of the sender: one track event each."""
    events = []
    for i in range(PEOPLE_PER_SENDER):
        person = _person(sender, i)
        events.append(
            ingest_pb2.Event(
                message_id=f"m-{person}-{step}",
                type=ingest_pb2.EVENT_TYPE_TRACK,
                user_id=person,
                event="Step",
                properties=orjson.dumps({"step": step}),
            )
        )
    return ingest_pb2.BatchRequest(events=events)


async def test_event_sync_forwards_every_shard_once_in_order_per_person(
    database_url: str, redis_url: str, workspace: WorkspaceKeys
) -> None:
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    redis = redis_asyncio.Redis.from_url(redis_url)
    async with webhook(SECRET, [(503, {}, 0.0)], hold_at=HELD_REQUEST) as receiver:
        with (
            _started(database_url, redis_url, ["ingest", "ingest"]) as ingests,
            _started(database_url, redis_url, ["sync"]) as first_sync,
        ):
            for _, address in [*ingests, *first_sync]:
                await wait_serving(address)
            [(doomed, sync_address)] = first_sync
            async with grpc.aio.insecure_channel(sync_address) as sync_channel:
                stub = sync_pb2_grpc.SyncServiceStub(sync_channel)
                destination = await create_webhook_destination(
                    stub, admin, receiver.url, SECRET, batch_size=5
                )
                sync = await create_realtime_event_sync(stub, admin, destination.id)

            channels = [grpc.aio.insecure_channel(address) for _, address in ingests]
            try:
                stubs = [ingest_pb2_grpc.IngestServiceStub(c) for c in channels]

                async def sender(number: int) -> None:
                    # One person's steps are sent one after another: their seq order.
                    for step in range(EVENTS_PER_PERSON):
                        reply = await stubs[number % 2].Batch(_batch(number, step), metadata=write)
                        assert reply.accepted == PEOPLE_PER_SENDER, reply

                await asyncio.gather(*(sender(n) for n in range(SENDERS)))
            finally:
                for channel in channels:
                    await channel.close()

            async def held() -> bool:
                return len(receiver.requests) >= HELD_REQUEST

            await eventually(held, 30, "the held request to arrive")
            doomed.kill()  # SIGKILL: the held batch's answer will never be read
            await asyncio.to_thread(doomed.wait, 10)
            receiver.release.set()  # the destination applies the batch anyway

            with _started(database_url, redis_url, ["sync"]) as second_sync:
                await wait_serving(second_sync[0][1])
                total = SENDERS * PEOPLE_PER_SENDER * EVENTS_PER_PERSON

                async def forwarded() -> bool:
                    return len(receiver.applied) >= total

                await eventually(forwarded, 60, "every event forwarded")

                async def acknowledged() -> bool:
                    for stream in streams.event_streams(SHARDS):
                        groups = await redis.xinfo_groups(stream)
                        mine = [g for g in groups if g["name"].decode() == event_group(sync.id)]
                        if not mine or mine[0]["pending"] or mine[0]["lag"]:
                            return False
                    return True

                await eventually(acknowledged, 20, "every shard's entries acknowledged")
            shard_lengths = [await redis.xlen(s) for s in streams.event_streams(SHARDS)]
    await redis.aclose()

    assert all(shard_lengths), shard_lengths  # the people are spread over every shard
    sent = {
        f"m-{_person(n, i)}-{step}"
        for n in range(SENDERS)
        for i in range(PEOPLE_PER_SENDER)
        for step in range(EVENTS_PER_PERSON)
    }
    applied = [e["message_id"] for e in receiver.applied]
    assert len(applied) == len(set(applied)) and set(applied) == sent  # each exactly once
    steps: dict[str, list[int]] = {}
    for event in receiver.applied:
        steps.setdefault(event["id"], []).append(event["properties"]["step"])
    assert steps == {
        _person(n, i): list(range(EVENTS_PER_PERSON))
        for n in range(SENDERS)
        for i in range(PEOPLE_PER_SENDER)
    }
    # Every batch went out once, but for the refused first attempt and the held batch,
    # which the second process re-sent under the same key.
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    repeated = [k for k in set(keys) if keys.count(k) > 1]
    assert len(keys) == len(set(keys)) + 2 and len(repeated) == 2, keys
    assert all("@stream:events:" in k for k in keys)
