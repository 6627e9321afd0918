"""Two ingest processes on four shards, one SIGKILLed under load from four clients
between committing events and publishing them: nothing acknowledged is lost, the other
process's catch-up republishes every shard (the killed process is not restarted), and
the retried batches are stored once each (ACCEPTED or DUPLICATE).

Each person browses anonymously and then identifies, linking a new user id (guarded by
its own shard) to the visitor's profile: many groups hold two shard locks. As in
test_sigkill.py the kill is made to land in the window, not left to timing: Redis
writes are paused once enough batches are acknowledged, the test waits until Postgres
holds events of the doomed process's clients that nobody was answered for, and only
then kills it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import ingest_pb2, ingest_pb2_grpc

from services.dev_runner import start_processes
from services.shared import streams
from tests.e2e.ingest.test_sigkill import stored
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer, wait_serving
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

SHARDS = 4
SENDERS = 4  # sender n talks to process n % 2
PEOPLE_PER_BATCH = 40
BATCHES_PER_SENDER = 25
KILL_AFTER_ACKED_BATCHES = 10


def batch_of(sender: int, number: int) -> ingest_pb2.BatchRequest:
    """Per person: a page view as an anonymous visitor, then an identify linking a new
    user id (with a trait) to the visitor."""
    events = []
    for i in range(PEOPLE_PER_BATCH):
        person = f"{sender}-{number}-{i}"
        events.append(
            ingest_pb2.Event(
                message_id=f"m-{person}-view",
                type=ingest_pb2.EVENT_TYPE_TRACK,
                anonymous_id=f"a-{person}",
                event="Viewed",
            )
        )
        events.append(
            ingest_pb2.Event(
                message_id=f"m-{person}-identify",
                type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                anonymous_id=f"a-{person}",
                user_id=f"u-{person}",
                traits=orjson.dumps({"batch": number}),
            )
        )
    return ingest_pb2.BatchRequest(events=events)


def start_ingest(database_url: str, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OTEL_TRACES_EXPORTER": "none",
        "INGEST_HTTP_PORT": "0",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "INGEST_SHARDS": str(SHARDS),
    }
    (process,) = start_processes(env, {"ingest": port})
    return process, f"127.0.0.1:{port}"


async def shard_seqs(redis: redis_asyncio.Redis) -> list[list[int]]:
    """Per shard, the seq of every event entry on its stream, in stream order."""
    return [
        [int(f[b"seq"]) for _, f in await redis.xrange(stream) if f[b"kind"] == b"event"]
        for stream in streams.event_streams(SHARDS)
    ]


async def all_published(database_url: str, redis: redis_asyncio.Redis) -> None:
    async def done() -> bool:
        on_streams = [seq for seqs in await shard_seqs(redis) for seq in seqs]
        return sorted(on_streams) == sorted((await stored(database_url)).values())

    await eventually(done, 30, "every stored event on its shard's stream")


async def test_sigkill_of_one_of_two_processes_loses_and_doubles_nothing(  # type: ignore[no-untyped-def]
    database_url, redis_url, workspace
) -> None:
    redis = redis_asyncio.Redis.from_url(redis_url)
    processes = [start_ingest(database_url, redis_url) for _ in range(2)]
    doomed, survivor = processes[0][0], processes[1][0]
    acknowledged: set[str] = set()
    unanswered: list[ingest_pb2.BatchRequest] = []
    acked_batches = 0
    enough_acked = asyncio.Event()
    try:
        for _, address in processes:
            await wait_serving(address)
        channels = [grpc.aio.insecure_channel(address) for _, address in processes]
        stubs = [ingest_pb2_grpc.IngestServiceStub(channel) for channel in channels]

        async def sender(number: int) -> None:
            nonlocal acked_batches
            batches = [batch_of(number, b) for b in range(BATCHES_PER_SENDER)]
            for index, batch in enumerate(batches):
                try:
                    reply = await stubs[number % 2].Batch(batch, metadata=bearer(workspace.ingest))
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    unanswered.extend(batches[index:])  # this one and the unsent rest
                    return
                assert reply.accepted == len(batch.events)
                acknowledged.update(e.message_id for e in batch.events)
                acked_batches += 1
                if acked_batches >= KILL_AFTER_ACKED_BATCHES:
                    enough_acked.set()

        async def doomed_committed_unanswered() -> bool:
            mine = [m for m in await stored(database_url) if m.split("-")[1] in {"0", "2"}]
            return any(m not in acknowledged for m in mine)

        async def killer() -> None:
            await enough_acked.wait()
            await redis.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
            try:
                await eventually(doomed_committed_unanswered, 15, "a commit not answered")
                doomed.kill()  # SIGKILL: no drain, whatever is in flight is cut off
                await asyncio.to_thread(doomed.wait, 10)
            finally:
                await redis.execute_command("CLIENT", "UNPAUSE")

        await asyncio.gather(killer(), *(sender(n) for n in range(SENDERS)))
        assert unanswered and acknowledged
        # The surviving process's catch-up republishes what the killed one committed.
        await all_published(database_url, redis)
        before_retry = await stored(database_url)
        assert acknowledged <= before_retry.keys()

        # The clients of the killed process retry everything unanswered on the other.
        for batch in unanswered:
            reply = await stubs[1].Batch(batch, metadata=bearer(workspace.ingest))
            assert reply.accepted + reply.duplicates == len(batch.events)
            assert reply.rejected == 0
        for channel in channels:
            await channel.close()
        await all_published(database_url, redis)
        final = await stored(database_url)
        sent = {
            e.message_id
            for n in range(SENDERS)
            for b in range(BATCHES_PER_SENDER)
            for e in batch_of(n, b).events
        }
        assert final.keys() == sent
        assert {m: final[m] for m in before_retry} == before_retry  # stored once each
        per_shard = await shard_seqs(redis)
        for seqs in per_shard:
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert sorted(s for seqs in per_shard for s in seqs) == sorted(final.values())
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        await redis.aclose()
        assert survivor is not None
