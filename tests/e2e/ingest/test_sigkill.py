"""The ingest process killed (SIGKILL) under load, between committing events and
publishing them, loses nothing it acknowledged and doubles nothing: after a restart
every committed event is on the event stream once and in the hot state, and a client
retrying what was not acknowledged gets each event stored exactly once (ACCEPTED or
DUPLICATE).

The kill is made to land in that window, not left to timing: Redis writes are paused
(CLIENT PAUSE WRITE) once enough batches are acknowledged, the test waits until
Postgres holds events nobody was answered for (a group committed, its Redis update
stuck behind the pause), and only then kills the process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg
import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import ingest_pb2, ingest_pb2_grpc

from services.dev_runner import start_processes
from services.ingest.publisher import CURSOR_KEY, STREAM_KEY
from services.shared import hotstate
from tests.helpers.backends import asyncpg_dsn, free_port
from tests.helpers.grpc_client import bearer, wait_serving
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

SENDERS = 4
EVENTS_PER_BATCH = 100
BATCHES_PER_SENDER = 40
KILL_AFTER_ACKED_BATCHES = 12


def batch_of(sender: int, number: int) -> ingest_pb2.BatchRequest:
    """A batch of new users: an identify (with a trait) then a track for each."""
    events = []
    for i in range(EVENTS_PER_BATCH // 2):
        user = f"u-{sender}-{number}-{i}"
        events.append(
            ingest_pb2.Event(
                message_id=f"{user}-identify",
                type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                user_id=user,
                traits=orjson.dumps({"batch": number}),
            )
        )
        events.append(
            ingest_pb2.Event(
                message_id=f"{user}-track",
                type=ingest_pb2.EVENT_TYPE_TRACK,
                user_id=user,
                event="Viewed",
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
    }
    (process,) = start_processes(env, {"ingest": port})
    return process, f"127.0.0.1:{port}"


async def stream_seqs(redis: redis_asyncio.Redis) -> list[int]:
    """The seq of every event entry on the stream, in stream order."""
    entries = await redis.xrange(STREAM_KEY)
    return [int(fields[b"seq"]) for _, fields in entries if fields[b"kind"] == b"event"]


async def stored(database_url: str) -> dict[str, int]:
    """message_id -> seq of every stored event."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch("SELECT message_id, seq FROM events")
    finally:
        await connection.close()
    return {row["message_id"]: row["seq"] for row in rows}


async def committed_beyond(database_url: str, acknowledged: set[str]) -> None:
    """Wait until Postgres holds an event that was not acknowledged (yet)."""

    async def unacknowledged() -> bool:
        return len(await stored(database_url)) > len(acknowledged)

    await eventually(unacknowledged, 15, "a group committed beyond the acknowledged events")


async def caught_up(database_url: str, redis: redis_asyncio.Redis) -> None:
    """Wait until the stream cursor has reached the last stored event's seq."""

    async def reached() -> bool:
        seqs = (await stored(database_url)).values()
        cursor = await redis.get(CURSOR_KEY)
        return bool(seqs) and cursor is not None and int(cursor) >= max(seqs)

    await eventually(reached, 30, "the stream cursor at the last stored seq")


async def test_sigkill_under_load_loses_and_doubles_nothing(  # type: ignore[no-untyped-def]
    database_url, redis_url, workspace
) -> None:
    redis = redis_asyncio.Redis.from_url(redis_url)
    process, address = start_ingest(database_url, redis_url)
    acknowledged: set[str] = set()
    unanswered: list[ingest_pb2.BatchRequest] = []
    acked_batches = 0
    enough_acked = asyncio.Event()
    try:
        await wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)

            async def sender(number: int) -> None:
                nonlocal acked_batches
                batches = [batch_of(number, b) for b in range(BATCHES_PER_SENDER)]
                for index, batch in enumerate(batches):
                    try:
                        reply = await stub.Batch(batch, metadata=bearer(workspace.ingest))
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                        unanswered.extend(batches[index:])  # this one and the unsent rest
                        return
                    assert reply.accepted == len(batch.events)
                    acknowledged.update(e.message_id for e in batch.events)
                    acked_batches += 1
                    if acked_batches >= KILL_AFTER_ACKED_BATCHES:
                        enough_acked.set()

            async def killer() -> None:
                await enough_acked.wait()
                await redis.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
                try:
                    await committed_beyond(database_url, acknowledged)
                    process.kill()  # SIGKILL: no drain, whatever is in flight is cut off
                    await asyncio.to_thread(process.wait, 10)
                finally:
                    await redis.execute_command("CLIENT", "UNPAUSE")

            await asyncio.gather(killer(), *(sender(n) for n in range(SENDERS)))
        # The kill landed after a commit and before its publish.
        assert unanswered and acknowledged
        before_restart = await stored(database_url)
        assert len(before_restart) > len(acknowledged)
        cursor = await redis.get(CURSOR_KEY)
        assert int(cursor or 0) < max(before_restart.values())

        process, address = start_ingest(database_url, redis_url)
        await wait_serving(address)
        await caught_up(database_url, redis)
        after_restart = await stored(database_url)
        assert acknowledged <= after_restart.keys()
        seqs = await stream_seqs(redis)
        assert len(seqs) == len(set(seqs)), "an event was published twice"
        assert sorted(seqs) == sorted(after_restart.values())
        assert seqs == sorted(seqs)

        # The client retries every batch it got no answer for.
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            for batch in unanswered:
                reply = await stub.Batch(batch, metadata=bearer(workspace.ingest))
                assert reply.accepted + reply.duplicates == len(batch.events)
                assert reply.rejected == 0
        await caught_up(database_url, redis)
        final = await stored(database_url)
        sent = {
            e.message_id
            for n in range(SENDERS)
            for b in range(BATCHES_PER_SENDER)
            for e in batch_of(n, b).events
        }
        assert final.keys() == sent
        # Stored once each: the kept seqs of the events stored before the restart stand.
        assert {m: final[m] for m in after_restart} == after_restart
        seqs = await stream_seqs(redis)
        assert sorted(seqs) == sorted(final.values())
        assert len(seqs) == len(final)

        # The hot state followed too: every user's trait is readable from Redis.
        for message_id in sorted(acknowledged)[:: EVENTS_PER_BATCH // 2]:
            user = message_id.rsplit("-", 1)[0]
            profile_id = await redis.get(
                hotstate.identity_key(workspace.workspace_id, "user_id", user)
            )
            assert profile_id is not None, user
            traits = await redis.hgetall(
                hotstate.profile_key(workspace.workspace_id, int(profile_id), "traits")
            )
            assert b"batch" in traits, user
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        await redis.aclose()
