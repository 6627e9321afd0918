"""SIGTERM drains: watchers are told NOT_SERVING before the server stops, open streams
end at once with UNAVAILABLE while unary calls in flight still complete, and the
process exits cleanly."""

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import orjson
import pytest
from audiences.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from services.dev_runner import start_processes
from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers import backends
from tests.helpers.grpc_client import bearer, wait_serving
from tests.helpers.servers import in_process
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_sigterm_announces_not_serving_then_exits_cleanly(template_database: str) -> None:
    database_url = await backends.create_database(template=template_database)
    port = backends.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": backends.test_redis_url(),
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    (process,) = start_processes(env, {"profile": port})
    try:
        address = f"127.0.0.1:{port}"
        await wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            statuses = [(await watch.read()).status]
            process.terminate()
            statuses.append((await watch.read()).status)
        assert statuses == [
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        ]
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        await backends.drop_database(database_url)


async def test_sigterm_ends_open_streams_at_once_and_still_drains_unary_calls(
    database_url: str, redis_url: str, resources: Resources, workspace: WorkspaceKeys
) -> None:
    async with in_process(resources, ["ingest"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["ingest"]) as channel:
            await ingest_pb2_grpc.IngestServiceStub(channel).Batch(
                ingest_pb2.BatchRequest(
                    events=[
                        ingest_pb2.Event(
                            message_id="m-1",
                            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                            user_id="ada",
                            traits=orjson.dumps({"plan": "pro"}),
                        )
                    ]
                ),
                metadata=bearer(workspace.ingest),
            )
    admin = bearer(workspace.admin)
    async with _service("segmentation", database_url, redis_url) as (process, address):
        async with grpc.aio.insecure_channel(address) as channel:
            segmentation = segmentation_pb2_grpc.SegmentationServiceStub(channel)
            definition = orjson.dumps({"trait": {"name": "plan", "op": "eq", "value": "pro"}})
            await segmentation.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(key="pro", definition=definition)
                ),
                metadata=admin,
            )
            # A stream that never ends by itself, surely open: its first change arrived.
            watch = segmentation.WatchChanges(
                segmentation_pb2.WatchChangesRequest(), metadata=admin
            )
            assert (await watch.read()).audience_key == "pro"
            # A unary call held in flight by a lock on the table it reads.
            async with resources.engine.connect() as blocker:
                await blocker.execute(text("LOCK TABLE audiences IN ACCESS EXCLUSIVE MODE"))
                in_flight = asyncio.ensure_future(
                    segmentation.GetAudience(
                        segmentation_pb2.GetAudienceRequest(key="pro"), metadata=admin
                    )
                )
                await eventually(
                    lambda: _waiting_for_a_lock(resources), 10, "GetAudience waiting on the lock"
                )
                signalled = time.monotonic()
                process.terminate()
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await watch.read()
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in (ended.value.details() or "")
                assert not in_flight.done()
                await blocker.rollback()  # releases the lock: the call completes
            assert (await in_flight).key == "pro"
        await _exits_cleanly_within(process, signalled, 5)


async def _waiting_for_a_lock(resources: Resources) -> bool:
    async with resources.engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_sigterm_ends_an_idle_event_stream_after_answering_what_it_received(
    database_url: str, redis_url: str, workspace: WorkspaceKeys
) -> None:
    async with _service("ingest", database_url, redis_url) as (process, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stream = ingest_pb2_grpc.IngestServiceStub(channel).StreamEvents(
                metadata=bearer(workspace.ingest)
            )
            await stream.write(
                ingest_pb2.StreamEventsRequest(
                    events=[
                        ingest_pb2.Event(
                            message_id="s-1",
                            type=ingest_pb2.EVENT_TYPE_TRACK,
                            user_id="ada",
                            event="A",
                        )
                    ]
                )
            )
            acked = await stream.read()
            assert [r.status for r in acked.results] == [ingest_pb2.EVENT_STATUS_ACCEPTED]
            signalled = time.monotonic()
            process.terminate()  # the stream is open, waiting for the client's next message
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.read()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        await _exits_cleanly_within(process, signalled, 5)


@asynccontextmanager
async def _service(
    name: str, database_url: str, redis_url: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """One service as its own process with the default 10 s grace, longer than the
    bounds these tests set; yields the process and its address, killed if still up."""
    port = backends.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SHUTDOWN_GRACE_SECONDS": "10",
        "INGEST_HTTP_PORT": "0",
    }
    (process,) = start_processes(env, {name: port})
    try:
        address = f"127.0.0.1:{port}"
        await wait_serving(address)
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()


async def _exits_cleanly_within(
    process: subprocess.Popen[bytes], signalled: float, seconds: float
) -> None:
    """The process exits with 0 within `seconds` of its SIGTERM (well inside its grace,
    which an open stream used to hold the drain for)."""
    await eventually(
        lambda: asyncio.sleep(0, process.poll() is not None), seconds, "the process to exit"
    )
    assert time.monotonic() - signalled < seconds
    assert process.wait() == 0
