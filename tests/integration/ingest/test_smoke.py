"""Ingest over gRPC: the happy path stores, resolves, updates hot state and publishes."""

import pytest
from audiences.v1 import ingest_pb2

from tests.helpers.grpc_client import bearer
from tests.integration.ingest.support import (
    NOW_US,
    canonical_of,
    event,
    hot_traits,
    stored_events,
    stream_entries,
)

pytestmark = pytest.mark.integration


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
