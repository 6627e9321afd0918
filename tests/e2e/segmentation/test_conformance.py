"""Every conformance case through the real services, as separate processes: events in
through ingest's Batch, definitions through the segmentation API, evaluation at the
case's `now` with Preview / PreviewComputedTrait (as_of = now, every member), and the
exact expected members and computed values required."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from audiences.v1 import ingest_pb2, segmentation_pb2

from services.segmentation.language import dependency_order
from services.shared.timestamps import timestamp_from_us
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import ingest_and_segmentation
from tests.integration.segmentation.apisupport import name_of
from tests.unit.segmentation.conformance_cases import (
    case_by_name,
    case_names,
    close,
    computed_order,
    to_us,
)

pytestmark = pytest.mark.e2e

BATCH = 1_000
TYPES = {
    "track": ingest_pb2.EVENT_TYPE_TRACK,
    "identify": ingest_pb2.EVENT_TYPE_IDENTIFY,
    "page": ingest_pb2.EVENT_TYPE_PAGE,
    "screen": ingest_pb2.EVENT_TYPE_SCREEN,
    "group": ingest_pb2.EVENT_TYPE_GROUP,
    "alias": ingest_pb2.EVENT_TYPE_ALIAS,
}


def to_message(e: dict[str, Any]) -> ingest_pb2.Event:
    """A case's snake_case Segment-shaped event as an audiences.v1.Event."""

    def payload(key: str) -> bytes:
        return orjson.dumps(e[key]) if e.get(key) is not None else b""

    message = ingest_pb2.Event(
        type=TYPES[e["type"]],
        message_id=e["message_id"],
        user_id=e.get("user_id") or "",
        anonymous_id=e.get("anonymous_id") or "",
        event=e.get("event") or "",
        name=e.get("name") or "",
        properties=payload("properties"),
        traits=payload("traits"),
        context=payload("context"),
        group_id=e.get("group_id") or "",
        previous_id=e.get("previous_id") or "",
    )
    message.timestamp.CopyFrom(timestamp_from_us(to_us(e["timestamp"])))
    return message


@pytest.mark.parametrize("name", case_names())
async def test_case(name: str, database_url: str, redis_url: str, workspace) -> None:  # type: ignore[no-untyped-def]
    case = case_by_name(name)
    expected = case["expected"]
    now = timestamp_from_us(to_us(case["now"]))
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    async with ingest_and_segmentation(database_url, redis_url) as (ingest, seg):
        events = case["events"]
        for start in range(0, len(events), BATCH):
            chunk = [to_message(e) for e in events[start : start + BATCH]]
            reply = await ingest.Batch(ingest_pb2.BatchRequest(events=chunk), metadata=write)
            assert reply.rejected == 0, [r for r in reply.results if r.violations][:3]

        for key in computed_order(case):  # a referenced computed trait must exist
            await seg.CreateComputedTrait(
                segmentation_pb2.CreateComputedTraitRequest(
                    computed_trait=segmentation_pb2.ComputedTrait(
                        key=key, definition=orjson.dumps(case["computed_traits"][key])
                    ),
                    skip_backfill=True,
                ),
                metadata=admin,
            )
        for key in dependency_order(case["audiences"]):
            await seg.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key=key, definition=orjson.dumps(case["audiences"][key])
                    ),
                    skip_backfill=True,
                ),
                metadata=admin,
            )

        bad = []
        for key, definition in case["computed_traits"].items():
            reply = await seg.PreviewComputedTrait(
                segmentation_pb2.PreviewComputedTraitRequest(
                    definition=orjson.dumps(definition), as_of=now, sample_limit=-1
                ),
                metadata=admin,
            )
            got = {name_of(v.profile): orjson.loads(v.value) for v in reply.values}
            assert set(got) == set(expected["computed"]), f"{key}: universe differs"
            assert reply.profiles == len(expected["computed"])
            bad += [
                (key, pid, got[pid], want[key])
                for pid, want in expected["computed"].items()
                if not close(got[pid], want[key])
            ]
        assert not bad, f"{len(bad)} computed values differ, e.g. {bad[:5]}"

        wrong = {}
        for key, definition in case["audiences"].items():
            reply = await seg.Preview(
                segmentation_pb2.PreviewRequest(
                    definition=orjson.dumps(definition), as_of=now, sample_limit=-1
                ),
                metadata=admin,
            )
            got = {name_of(ref) for ref in reply.sample}
            assert reply.size == len(got)
            want = set(expected["members"][key])
            if got != want:
                wrong[key] = (sorted(got - want)[:5], sorted(want - got)[:5])
        assert not wrong, f"audiences differ (extra, missing): {wrong}"
