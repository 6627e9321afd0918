"""An account-level audience through the real ingest and segmentation processes: group
and track calls in through ingest's Batch, the audience created with a backfill, and
exactly the expected accounts out of ListMembers (named by group_id)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from audiences.v1 import ingest_pb2, segmentation_pb2

from services.shared.timestamps import timestamp_from_us
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import ingest_and_segmentation

pytestmark = pytest.mark.e2e

HOUR_US = 3_600_000_000


def _event(kind: int, n: int, hours_ago: int, **fields: str) -> ingest_pb2.Event:
    message = ingest_pb2.Event(type=kind, message_id=f"acct-e2e-{n}", **fields)
    message.timestamp.CopyFrom(timestamp_from_us(int(time.time() * 1e6) - hours_ago * HOUR_US))
    return message


async def test_account_audience_through_the_processes(  # type: ignore[no-untyped-def]
    database_url, redis_url, workspace
) -> None:
    group, track, identify = (
        ingest_pb2.EVENT_TYPE_GROUP,
        ingest_pb2.EVENT_TYPE_TRACK,
        ingest_pb2.EVENT_TYPE_IDENTIFY,
    )
    plan = orjson.dumps
    events = [
        _event(group, 1, 9, user_id="ann", group_id="acme", traits=plan({"plan": "enterprise"})),
        _event(group, 2, 9, user_id="bo", group_id="acme"),
        _event(group, 3, 9, user_id="cy", group_id="bolt", traits=plan({"plan": "enterprise"})),
        _event(group, 4, 9, user_id="di", group_id="core", traits=plan({"plan": "enterprise"})),
        _event(group, 5, 8, user_id="di", group_id="core", traits=plan({"plan": "free"})),
        # An anonymous visitor joins dock and later turns out to be ann.
        _event(
            group, 6, 9, anonymous_id="v1", group_id="dock", traits=plan({"plan": "enterprise"})
        ),
        _event(identify, 7, 7, user_id="ann", anonymous_id="v1"),
        _event(track, 8, 2, user_id="ann", event="Seat Added"),
        _event(track, 9, 2, user_id="cy", event="Seat Added"),
        _event(track, 10, 2, user_id="di", event="Seat Added"),
    ]
    definition = {
        "all": [
            {"trait": {"name": "plan", "op": "eq", "value": "enterprise"}},
            {"account": {"match": "any", "condition": {"event": {"name": "Seat Added"}}}},
            {
                "not": {
                    "account": {
                        "match": "none",
                        "condition": {"trait": {"name": "x", "op": "not_exists"}},
                    }
                }
            },
        ]
    }
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    async with ingest_and_segmentation(database_url, redis_url) as (ingest, seg):
        reply = await ingest.Batch(ingest_pb2.BatchRequest(events=events), metadata=write)
        assert reply.accepted == len(events), reply
        await seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="growing_enterprises",
                    definition=orjson.dumps(definition),
                    account_level=True,
                )
            ),
            metadata=admin,
        )
        deadline = time.monotonic() + 30
        while True:  # poll the backfill's state, with a deadline
            got = await seg.GetAudience(
                segmentation_pb2.GetAudienceRequest(key="growing_enterprises"), metadata=admin
            )
            assert got.state != segmentation_pb2.AUDIENCE_STATE_FAILED
            if got.state == segmentation_pb2.AUDIENCE_STATE_LIVE:
                break
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        page = await seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key="growing_enterprises"),
            metadata=admin,
        )
        members = sorted((i.type, i.value) for m in page.members for i in m.profile.identifiers)
        # acme: ann bought; bolt: cy; core is on the free plan now; dock: ann (merged).
        assert members == [("group_id", "acme"), ("group_id", "bolt"), ("group_id", "dock")]
        assert page.total == 3
