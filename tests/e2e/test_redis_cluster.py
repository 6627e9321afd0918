"""The services on a Redis Cluster (REDIS_CLUSTER=1): ingest, segmentation, profile and
the realtime worker as processes against Postgres and a three-node cluster, events of
many profiles on two stream shards, a realtime audience and a realtime computed trait;
mid-run the workspace's slot (all of its hot state: keys share the hash tag {ws}) and
then one stream shard's slot (the stream and its cursor) move to another node. Every
call keeps working (no CROSSSLOT; MOVED and ASK followed by the client), and every
acknowledged event is reflected: each profile's traits and count, and the audience's
members exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.shared import hotstate
from services.shared.streams import event_stream
from tests.conftest import WorkspaceKeys
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.realtime import realtime_worker
from tests.helpers.redis_cluster import CLUSTER_SHARDS, RedisClusterNodes, slot_of
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

USERS = 40
ROUNDS = 24
SHARDS = CLUSTER_SHARDS


def _user(i: int) -> str:
    return f"user-{i}"


def _batch(i: int, round_: int) -> ingest_pb2.BatchRequest:
    """User i's events of one round: an identify and a track (Viewed for even users)."""
    return ingest_pb2.BatchRequest(
        events=[
            ingest_pb2.Event(
                message_id=f"{i}-{round_}-identify",
                type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                user_id=_user(i),
                traits=orjson.dumps({"round": round_, "i": i}),
            ),
            ingest_pb2.Event(
                message_id=f"{i}-{round_}-track",
                type=ingest_pb2.EVENT_TYPE_TRACK,
                user_id=_user(i),
                event="Viewed" if i % 2 == 0 else "Clicked",
            ),
        ]
    )


async def test_hot_state_streams_and_reads_survive_slot_moves(
    database_url: str, cluster: RedisClusterNodes, cluster_workspace: WorkspaceKeys
) -> None:
    workspace = cluster_workspace
    admin, write, read = (
        bearer(workspace.admin),
        bearer(workspace.ingest),
        bearer(workspace.profile),
    )
    env = {"SEGMENTATION_RECONCILE_SECONDS": "0"}
    names = ["ingest", "segmentation", "profile"]
    async with (
        as_processes(database_url, cluster.url, names, env) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
        grpc.aio.insecure_channel(addresses["segmentation"]) as seg_channel,
        grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
        realtime_worker(database_url, cluster.url, "w1", env),
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        seg = segmentation_pb2_grpc.SegmentationServiceStub(seg_channel)
        profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        await seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="viewers",
                    definition=orjson.dumps(
                        {"event": {"name": "Viewed", "window": {"within_days": 7}}}
                    ),
                    realtime=True,
                )
            ),
            metadata=admin,
        )
        await wait_live(seg, "viewers", admin)
        await seg.CreateComputedTrait(
            segmentation_pb2.CreateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(
                    key="views",
                    definition=orjson.dumps(
                        {"type": "event_count", "event": "Viewed", "window": {"within_days": 7}}
                    ),
                    realtime=True,
                )
            ),
            metadata=admin,
        )

        async def get(i: int) -> profile_pb2.Profile:
            return await profile.GetProfile(
                profile_pb2.GetProfileRequest(
                    identifier=common_pb2.Identifier(type="user_id", value=_user(i))
                ),
                metadata=read,
            )

        rounds_done = 0
        sending = True

        async def send() -> None:
            nonlocal rounds_done
            for round_ in range(ROUNDS):
                replies = await asyncio.gather(
                    *(ingest.Batch(_batch(i, round_), metadata=write) for i in range(USERS))
                )
                assert all(reply.accepted == 2 for reply in replies), replies
                rounds_done += 1

        reads = 0

        async def keep_reading() -> None:
            # GetProfile keeps answering through the moves (a profile not yet written
            # is NOT_FOUND, which is an answer too).
            nonlocal reads
            i = 0
            while sending:
                try:
                    await get(i % USERS)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND, error
                reads += 1
                i += 1

        async def after_round(n: int) -> bool:
            return rounds_done >= n

        sender = asyncio.create_task(send())
        reader = asyncio.create_task(keep_reading())
        try:
            await eventually(lambda: after_round(4), 60, "four rounds acknowledged")
            workspace_slot = slot_of(hotstate.workspace_prefix(workspace.workspace_id))
            to = next(p for p in cluster.ports if p != cluster.owner(workspace_slot))
            moved = await asyncio.to_thread(cluster.move_slot, workspace_slot, to)
            assert moved > 0, "the workspace's slot held its hot state"
            assert cluster.owner(workspace_slot) == to
            assert not sender.done(), "the slot moved while events were still coming"

            await eventually(lambda: after_round(12), 60, "twelve rounds acknowledged")
            stream = event_stream(0, SHARDS)
            stream_slot = slot_of(stream)
            to = next(p for p in cluster.ports if p != cluster.owner(stream_slot))
            moved = await asyncio.to_thread(cluster.move_slot, stream_slot, to)
            assert moved >= 2, "the shard's slot held its stream and cursor"
            assert not sender.done(), "the slot moved while events were still coming"
            await sender
        finally:
            sending = False
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, reader, return_exceptions=True)
        await reader  # raises what the reader saw
        assert reads > 0

        viewers = {_user(i) for i in range(USERS) if i % 2 == 0}

        found: set[str] = set()

        async def members_exact() -> bool:
            nonlocal found
            reply = await seg.ListMembers(
                segmentation_pb2.ListMembersRequest(audience_key="viewers", page_size=1000),
                metadata=admin,
            )
            found = {
                i.value for m in reply.members for i in m.profile.identifiers if i.type == "user_id"
            }
            return found == viewers

        try:
            await eventually(members_exact, 60, "exactly the even users in viewers")
        except TimeoutError as error:
            raise AssertionError(
                f"viewers: missing {viewers - found}, extra {found - viewers}"
            ) from error

        stale: list[Any] = []

        async def every_profile_current() -> bool:
            stale.clear()
            for i in range(USERS):
                got = await get(i)
                traits = orjson.loads(got.traits or b"{}")
                computed = orjson.loads(got.computed_traits or b"{}")
                views = computed.get("views", 0)
                in_viewers = [a.key for a in got.audiences] == ["viewers"]
                want_views = ROUNDS if i % 2 == 0 else 0
                if (
                    traits != {"round": ROUNDS - 1, "i": i}
                    or views != want_views
                    or in_viewers != (i % 2 == 0)
                ):
                    stale.append((i, traits, computed, [a.key for a in got.audiences]))
            return not stale

        try:
            await eventually(every_profile_current, 60, "every profile reflects every event")
        except TimeoutError as error:
            raise AssertionError(
                f"stale profiles (i, traits, computed, audiences): {stale}"
            ) from error
