"""The cache of encoded profile sections (the `wire` hash of services.shared.hotstate).

GetProfile keeps each section's encoding once built; every writer drops what it
changes. These tests run the real writers (ingest, segmentation, erasure) against real
Redis and Postgres and read through the real profile service after each write, so a
writer that forgot its part would show a stale profile here.
"""

from __future__ import annotations

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
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from services.profile.hotread import HotProfiles
from services.profile.model import Identifier, ProfileQuery
from services.shared import hotstate
from services.shared.server import Resources
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.integration.profile.seeding import HotSeed, seed_hot

pytestmark = pytest.mark.integration

T0 = 1_735_689_600  # seconds


def _at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def _wire_key(workspace_id: str, profile_id: str) -> str:
    return hotstate.profile_key(workspace_id, profile_id, "wire")


# The flags a GetProfile without `include` asks the read script for: every section.
EVERY_SECTION = "aciprtw"


async def _cached(resources: Resources, workspace_id: str, profile_id: str) -> set[str]:
    """The request shapes (flags) the profile's wire cache holds an encoding for."""
    fields = await resources.redis.hkeys(_wire_key(workspace_id, profile_id))
    return {f.decode() for f in fields}


async def test_every_writer_drops_what_it_changes(resources: Resources, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    admin, writer, reader = (
        bearer(workspace.admin),
        bearer(workspace.ingest),
        bearer(workspace.profile),
    )
    ada = common_pb2.Identifier(type="user_id", value="ada")
    async with in_process(resources, ["ingest", "segmentation", "profile"]) as addresses:
        async with (
            grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
            grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation_channel,
            grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
        ):
            ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
            segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
            profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)

            async def send(*events: ingest_pb2.Event) -> None:
                sent = await ingest.Batch(
                    ingest_pb2.BatchRequest(events=list(events)), metadata=writer
                )
                assert sent.accepted == len(events)

            async def read(identifier: common_pb2.Identifier = ada) -> profile_pb2.Profile:
                return await profiles.GetProfile(
                    profile_pb2.GetProfileRequest(identifier=identifier), metadata=reader
                )

            await send(
                ingest_pb2.Event(
                    message_id="m1",
                    type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                    user_id="ada",
                    traits=orjson.dumps({"plan": "free"}),
                    timestamp=_at(T0),
                )
            )
            first = await read()
            pid = first.profile_id
            assert orjson.loads(first.traits) == {"plan": "free"}
            assert await _cached(resources, ws, pid) == {EVERY_SECTION}

            # A track moves last_seen only: the cached sections stay, last_seen is fresh.
            await send(
                ingest_pb2.Event(
                    message_id="m2",
                    type=ingest_pb2.EVENT_TYPE_TRACK,
                    user_id="ada",
                    event="Viewed",
                    timestamp=_at(T0 + 60),
                )
            )
            assert await _cached(resources, ws, pid) == {EVERY_SECTION}
            assert (await read()).last_seen.seconds == T0 + 60

            # Ingest changes traits and links an identifier: the cache is dropped.
            await send(
                ingest_pb2.Event(
                    message_id="m3",
                    type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                    user_id="ada",
                    traits=orjson.dumps({"plan": "pro"}),
                    external_ids=[common_pb2.Identifier(type="email", value="ada@example.com")],
                    timestamp=_at(T0 + 120),
                )
            )
            assert await _cached(resources, ws, pid) == set()
            after_identify = await read()
            assert orjson.loads(after_identify.traits) == {"plan": "pro"}
            assert ("email", "ada@example.com") in {
                (i.type, i.value) for i in after_identify.identifiers
            }
            assert list(after_identify.audiences) == []

            # Segmentation's membership writes drop the cached audiences.
            await segmentation.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key="pro",
                        name="pro",
                        definition=orjson.dumps(
                            {"trait": {"name": "plan", "op": "eq", "value": "pro"}}
                        ),
                    )
                ),
                metadata=admin,
            )
            await wait_live(segmentation, "pro", admin)
            assert [a.key for a in (await read()).audiences] == ["pro"]

            # A merge: the anonymous profile's history joins ada; both read the survivor.
            await send(
                ingest_pb2.Event(
                    message_id="m4",
                    type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                    anonymous_id="anon-1",
                    traits=orjson.dumps({"color": "green"}),
                    timestamp=_at(T0 + 180),
                )
            )
            anon = common_pb2.Identifier(type="anonymous_id", value="anon-1")
            anon_pid = (await read(anon)).profile_id
            assert anon_pid != pid
            await send(
                ingest_pb2.Event(
                    message_id="m5",
                    type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                    user_id="ada",
                    anonymous_id="anon-1",
                    timestamp=_at(T0 + 240),
                )
            )
            merged = await read(anon)
            assert merged.profile_id == pid
            assert orjson.loads(merged.traits) == {"plan": "pro", "color": "green"}
            assert not await resources.redis.exists(_wire_key(ws, anon_pid))

            # Erasure removes the cache with the rest of the hot state.
            await profiles.DeleteProfile(
                profile_pb2.DeleteProfileRequest(identifier=ada), metadata=admin
            )
            assert not await resources.redis.exists(_wire_key(ws, pid))
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await read()
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reads_are_served_from_the_cache_until_a_writer_drops_it(
    resources: Resources,
) -> None:
    ws = "ws-cache"
    hot = HotProfiles(resources.redis, resources.pipelined)
    await seed_hot(
        resources.redis,
        ws,
        HotSeed(7, [("user_id", "u7")], traits={"plan": "free"}, last_seen_us=T0 * 10**6),
    )
    ada = Identifier("user_id", "u7")
    before = profile_pb2.Profile.FromString(await hot.read_encoded(ws, ada, ProfileQuery()))
    assert orjson.loads(before.traits) == {"plan": "free"}
    ttl = await resources.redis.ttl(_wire_key(ws, "7"))
    assert 0 < ttl <= hotstate.WIRE_CACHE_SECONDS

    # Written around the contract (no writer does this): the cached encoding answers.
    traits_key = hotstate.profile_key(ws, 7, "traits")
    await resources.redis.hset(traits_key, "plan", orjson.dumps("pro"))
    stale = profile_pb2.Profile.FromString(await hot.read_encoded(ws, ada, ProfileQuery()))
    assert orjson.loads(stale.traits) == {"plan": "free"}

    # A trait mask reads around the cache.
    masked = ProfileQuery(trait_keys=("plan",))
    fresh = profile_pb2.Profile.FromString(await hot.read_encoded(ws, ada, masked))
    assert orjson.loads(fresh.traits) == {"plan": "pro"}

    # Dropping the cache, as the writers do, brings the stored value back.
    await resources.redis.delete(_wire_key(ws, "7"))
    redone = profile_pb2.Profile.FromString(await hot.read_encoded(ws, ada, ProfileQuery()))
    assert orjson.loads(redone.traits) == {"plan": "pro"}


async def test_a_masked_request_over_grpc_reads_the_stored_traits(
    resources: Resources, workspace, profile_stub
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    await seed_hot(resources.redis, ws, HotSeed(9, [("user_id", "u9")], traits={"a": 1, "b": 2}))
    request = profile_pb2.GetProfileRequest(
        identifier=common_pb2.Identifier(type="user_id", value="u9")
    )
    whole = await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    assert orjson.loads(whole.traits) == {"a": 1, "b": 2}
    request.trait_mask.CopyFrom(FieldMask(paths=["b"]))
    only_b = await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    assert orjson.loads(only_b.traits) == {"b": 2}
