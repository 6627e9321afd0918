"""Every conformance case through the realtime path, as separate processes: the clock
(CLOCK_REDIS_KEY, shared by every process) set to the case's `now`, every audience and
computed trait created realtime and empty (no backfill, no Recompute), the events sent
through ingest's Batch, and only the realtime worker evaluating them: ListMembers and
the computed values the profile service serves must be exactly the expected ones."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.segmentation.language import dependency_order
from services.shared.streams import EVENTS_STREAM
from tests.e2e.segmentation.test_conformance import BATCH, to_message
from tests.helpers.grpc_client import bearer
from tests.helpers.realtime import realtime_worker
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually
from tests.integration.segmentation.apisupport import name_of
from tests.unit.segmentation.conformance_cases import (
    case_by_name,
    case_names,
    close,
    computed_order,
    to_us,
)

pytestmark = pytest.mark.e2e

CLOCK_KEY = "test:clock"
GROUP = "segmentation-realtime"


def _identifier(name: str) -> common_pb2.Identifier:
    if name.startswith("anon:"):
        return common_pb2.Identifier(type="anonymous_id", value=name[5:])
    return common_pb2.Identifier(type="user_id", value=name)


async def _members(seg: Any, key: str, admin: Any) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        reply = await seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key=key, page_size=1000, page_token=token),
            metadata=admin,
        )
        found |= {name_of(m.profile) for m in reply.members}
        token = reply.next_page_token
        if not token:
            return found


@pytest.mark.parametrize("name", case_names())
async def test_case(name: str, database_url: str, redis_url: str, workspace) -> None:  # type: ignore[no-untyped-def]
    case = case_by_name(name)
    expected = case["expected"]
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.set(CLOCK_KEY, to_us(case["now"]))
    env = {"CLOCK_REDIS_KEY": CLOCK_KEY, "SEGMENTATION_RECONCILE_SECONDS": "0"}
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    read = bearer(workspace.profile)
    names = ["ingest", "segmentation", "profile"]
    async with (
        as_processes(database_url, redis_url, names, env) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
        grpc.aio.insecure_channel(addresses["segmentation"]) as seg_channel,
        grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        seg = segmentation_pb2_grpc.SegmentationServiceStub(seg_channel)
        profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        for key in computed_order(case):  # a referenced computed trait must exist
            definition = case["computed_traits"][key]
            await seg.CreateComputedTrait(
                segmentation_pb2.CreateComputedTraitRequest(
                    computed_trait=segmentation_pb2.ComputedTrait(
                        key=key, definition=orjson.dumps(definition), realtime=True
                    ),
                    skip_backfill=True,
                ),
                metadata=admin,
            )
        for key in dependency_order(case["audiences"]):
            await seg.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key=key, definition=orjson.dumps(case["audiences"][key]), realtime=True
                    ),
                    skip_backfill=True,
                ),
                metadata=admin,
            )
        events = case["events"]
        for start in range(0, len(events), BATCH):
            chunk = [to_message(e) for e in events[start : start + BATCH]]
            reply = await ingest.Batch(ingest_pb2.BatchRequest(events=chunk), metadata=write)
            assert reply.rejected == 0, [r for r in reply.results if r.violations][:3]
        # The worker starts on the backlog (it creates its group from the stream's
        # start) and takes it in one read: the statements per batch are the cost.
        backlog = {**env, "REALTIME_BATCH_SIZE": "10000"}
        async with realtime_worker(database_url, redis_url, "conformance", backlog):

            async def settled() -> bool:
                groups = await client.xinfo_groups(EVENTS_STREAM)
                mine = [g for g in groups if g["name"].decode() == GROUP]
                return bool(mine) and mine[0]["pending"] == 0 and mine[0]["lag"] == 0

            await eventually(settled, 120, "the worker consumed every event")
        await client.aclose()

        wrong = {}
        for key in case["audiences"]:
            got = await _members(seg, key, admin)
            want = set(expected["members"][key])
            if got != want:
                wrong[key] = (sorted(got - want)[:5], sorted(want - got)[:5])
        assert not wrong, f"audiences differ (extra, missing): {wrong}"

        bad = []
        for person, values in expected["computed"].items():
            profile = await profiles.GetProfile(
                profile_pb2.GetProfileRequest(identifier=_identifier(person)), metadata=read
            )
            served = orjson.loads(profile.computed_traits or b"{}")
            bad += [
                (person, key, served.get(key), want)
                for key, want in values.items()
                if not close(served.get(key), want)
            ]
        assert not bad, f"{len(bad)} computed values differ, e.g. {bad[:5]}"
