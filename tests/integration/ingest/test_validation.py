"""Every validation rule of design.md section 5 over gRPC: the event is rejected with
its index, field and reason, nothing of it is stored, and the rest of the batch is."""

import grpc
import pytest
from audiences.v1 import ingest_pb2

from services.shared.errors import field_violations
from tests.helpers.grpc_client import bearer
from tests.integration.ingest.support import NOW_US, event, stamp, stored_events, stream_entries

pytestmark = pytest.mark.integration

HOUR_US = 3_600_000_000
DEEP = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}  # 9 levels

BAD_EVENTS = [
    ("no ids", event("track", "b1"), "user_id", "user_id or anonymous_id is required"),
    ("no name", event("track", "b2", user_id="u", event=""), "event", "event name"),
    ("unknown type", event("nope", "b3", user_id="u"), "type", "unknown event type"),
    (
        "future",
        event("track", "b4", user_id="u", at_us=NOW_US + 25 * HOUR_US),
        "timestamp",
        "more than 24 hours in the future",
    ),
    (
        "ancient",
        event("track", "b5", user_id="u", at_us=946_684_799_000_000),
        "timestamp",
        "before 2000-01-01",
    ),
    (
        "big properties",
        event("track", "b6", user_id="u", properties={"x": "y" * 33_000}),
        "properties",
        "larger than 32 KiB",
    ),
    (
        "deep traits",
        event("identify", "b7", user_id="u", traits=DEEP),
        "traits",
        "nested deeper than 8 levels",
    ),
    (
        "bad utf-8",
        event("track", "b8", user_id="u", properties=b'{"x": "\xff"}'),
        "properties",
        "not valid UTF-8",
    ),
    (
        "not an object",
        event("track", "b9", user_id="u", properties=b"[1, 2]"),
        "properties",
        "must be a JSON object",
    ),
    (
        "not json",
        event("identify", "b10", user_id="u", traits=b"{nope"),
        "traits",
        "not valid JSON",
    ),
    ("alias without previous", event("alias", "b11", user_id="u"), "previous_id", "previous_id"),
]


@pytest.mark.parametrize(
    ("case", "bad", "field", "reason"), BAD_EVENTS, ids=[b[0] for b in BAD_EVENTS]
)
async def test_each_rule_rejects_only_its_event(
    stub, resources, workspace, case, bad, field, reason
) -> None:  # type: ignore[no-untyped-def]
    good_before = event("track", "g1", anonymous_id="a1", at_us=NOW_US - 1)
    good_after = event("track", "g2", anonymous_id="a2", at_us=NOW_US - 1)
    reply = await stub.Batch(
        ingest_pb2.BatchRequest(events=[good_before, bad, good_after]),
        metadata=bearer(workspace.ingest),
    )
    statuses = [r.status for r in reply.results]
    assert statuses == [
        ingest_pb2.EVENT_STATUS_ACCEPTED,
        ingest_pb2.EVENT_STATUS_REJECTED,
        ingest_pb2.EVENT_STATUS_ACCEPTED,
    ]
    (violation,) = [v for v in reply.results[1].violations if v.field == f"events[1].{field}"]
    assert violation.index == 1
    assert reason in violation.reason
    assert (reply.accepted, reply.rejected) == (2, 1)
    assert [r["message_id"] for r in await stored_events(resources.engine)] == ["g1", "g2"]
    assert len(await stream_entries(resources.redis)) == 2


async def test_bad_timestamp_nanos_are_rejected(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    bad = event("track", "t1", user_id="u")
    bad.timestamp.seconds = NOW_US // 1_000_000
    bad.timestamp.nanos = 2_000_000_000
    reply = await stub.Batch(
        ingest_pb2.BatchRequest(events=[bad]), metadata=bearer(workspace.ingest)
    )
    assert reply.results[0].violations[0].field == "events[0].timestamp"
    assert reply.results[0].violations[0].reason == "not a valid timestamp"
    assert await stored_events(resources.engine) == []


async def test_single_rpc_rejection_is_invalid_argument_with_field(
    stub, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Track(
            ingest_pb2.EventRequest(event=event("track", "s1", user_id="u", event="")),
            metadata=bearer(workspace.ingest),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error.value)] == ["event.event"]
    assert await stored_events(resources.engine) == []


async def test_over_large_requests_are_resource_exhausted(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    too_many = [event("track", f"m{i}", user_id="u", at_us=NOW_US) for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Batch(
            ingest_pb2.BatchRequest(events=too_many), metadata=bearer(workspace.ingest)
        )
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    fat = [event("track", f"f{i}", user_id="u", properties={"x": "y" * 30_000}) for i in range(150)]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Batch(ingest_pb2.BatchRequest(events=fat), metadata=bearer(workspace.ingest))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4 MiB" in error.value.details()
    assert await stored_events(resources.engine) == []


async def test_a_key_without_ingest_write_is_permission_denied(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Track(
            ingest_pb2.EventRequest(event=event("track", "p1", user_id="u")),
            metadata=bearer(workspace.admin),
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await stored_events(resources.engine) == []


async def test_missing_timestamp_defaults_to_receipt(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    reply = await stub.Page(
        ingest_pb2.EventRequest(event=event("page", "p2", user_id="u", name="Home")),
        metadata=bearer(workspace.ingest),
    )
    assert reply.status == ingest_pb2.EVENT_STATUS_ACCEPTED
    (row,) = await stored_events(resources.engine)
    assert (row["timestamp_us"], row["type"], row["name"]) == (
        resources.clock.now_us(),
        "page",
        "Home",
    )
    assert stamp(row["timestamp_us"]).seconds == resources.clock.now_us() // 1_000_000
