"""Ingest over gRPC: the happy path stores, resolves, updates hot state and publishes."""

import grpc
import pytest
from audiences.v1 import ingest_pb2, ingest_pb2_grpc

from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.integration.ingest.support import (
    NOW_US,
    canonical_of,
    event,
    hot_traits,
    stored_events,
    stream_entries,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def stub(resources, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INGEST_HTTP_PORT", "0")
    async with in_process(resources, ["ingest"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["ingest"]) as channel:
            yield ingest_pb2_grpc.IngestServiceStub(channel)


async def test_batch_is_stored_resolved_and_published(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    reply = await stub.Batch(
        ingest_pb2.BatchRequest(
            events=[
                event("track", "m1", anonymous_id="a1", at_us=NOW_US - 10),
                event(
                    "identify",
                    "m2",
                    user_id="u1",
                    anonymous_id="a1",
                    at_us=NOW_US - 5,
                    traits={"plan": "pro"},
                ),
            ]
        ),
        metadata=bearer(workspace.ingest),
    )
    assert (reply.accepted, reply.duplicates, reply.rejected) == (2, 0, 0)
    rows = await stored_events(resources.engine)
    assert [r["message_id"] for r in rows] == ["m1", "m2"]
    pid = await canonical_of(resources.engine, workspace.workspace_id, "user_id", "u1")
    assert pid == await canonical_of(resources.engine, workspace.workspace_id, "anonymous_id", "a1")
    assert await hot_traits(resources.redis, workspace.workspace_id, pid) == {"plan": "pro"}
    entries = await stream_entries(resources.redis)
    assert [e[0] for e in entries] == [f"{r['seq']}-0" for r in rows]
