"""Erasing a profile takes the person out of every audience they were in, with an
`exited` change record that syncs will read and that names the person by the
identifiers they had, and removes their events from the event stream."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
from sqlalchemy import select

from services.segmentation.tables import membership_changes, memberships
from services.shared.server import Resources
from services.shared.streams import EVENTS_STREAM
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration


@asynccontextmanager
async def _services(
    resources: Resources,
) -> AsyncIterator[
    tuple[
        ingest_pb2_grpc.IngestServiceStub,
        segmentation_pb2_grpc.SegmentationServiceStub,
        profile_pb2_grpc.ProfileServiceStub,
    ]
]:
    """Ingest, segmentation and profile in this process, as client stubs."""
    async with (
        in_process(resources, ["ingest", "segmentation", "profile"]) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest,
        grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation,
        grpc.aio.insecure_channel(addresses["profile"]) as profiles,
    ):
        yield (
            ingest_pb2_grpc.IngestServiceStub(ingest),
            segmentation_pb2_grpc.SegmentationServiceStub(segmentation),
            profile_pb2_grpc.ProfileServiceStub(profiles),
        )


async def test_delete_profile_exits_every_audience(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(workspace.admin)
    async with _services(resources) as (ingest, segmentation, profiles):
        sent = await ingest.Batch(
            ingest_pb2.BatchRequest(
                events=[
                    ingest_pb2.Event(
                        message_id=f"m-{user}",
                        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                        user_id=user,
                        traits=orjson.dumps({"plan": "pro"}),
                    )
                    for user in ("ada", "bob")
                ]
            ),
            metadata=bearer(workspace.ingest),
        )
        assert sent.accepted == 2
        for key in ("pro", "pro_again"):
            await segmentation.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key=key,
                        name=key,
                        definition=orjson.dumps(
                            {"trait": {"name": "plan", "op": "eq", "value": "pro"}}
                        ),
                    )
                ),
                metadata=admin,
            )
            assert (await wait_live(segmentation, key, admin)).size == 2

        ada = await profiles.GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=common_pb2.Identifier(type="user_id", value="ada")
            ),
            metadata=bearer(workspace.profile),
        )
        deleted = await profiles.DeleteProfile(
            profile_pb2.DeleteProfileRequest(
                identifier=common_pb2.Identifier(type="user_id", value="ada")
            ),
            metadata=admin,
        )
        assert deleted.audiences_exited == 2
        for key in ("pro", "pro_again"):
            members = await segmentation.ListMembers(
                segmentation_pb2.ListMembersRequest(audience_key=key), metadata=admin
            )
            assert [
                [(i.type, i.value) for i in m.profile.identifiers if i.type == "user_id"]
                for m in members.members
            ] == [[("user_id", "bob")]]

    async with resources.engine.connect() as connection:
        left = (
            await connection.execute(
                select(memberships.c.profile_id).where(
                    memberships.c.profile_id == int(ada.profile_id)
                )
            )
        ).all()
        log = (
            await connection.execute(
                select(membership_changes.c.seq, membership_changes.c.kind)
                .where(membership_changes.c.profile_id == int(ada.profile_id))
                .order_by(membership_changes.c.seq)
            )
        ).all()
    assert left == []
    assert [kind for _, kind in log] == ["entered", "entered", "exited", "exited"]
    seqs = [seq for seq, _ in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


async def test_erasure_names_the_person_on_exits_and_clears_the_event_stream(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    admin = bearer(workspace.admin)
    async with _services(resources) as (ingest, segmentation, profiles):
        sent = await ingest.Batch(
            ingest_pb2.BatchRequest(
                events=[
                    ingest_pb2.Event(
                        message_id="m-anon",
                        type=ingest_pb2.EVENT_TYPE_TRACK,
                        anonymous_id="anon-ada",
                        event="Viewed",
                    ),
                    ingest_pb2.Event(
                        message_id="m-ada",
                        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                        user_id="ada",
                        anonymous_id="anon-ada",
                        traits=orjson.dumps({"plan": "pro", "email": "ada@example.com"}),
                    ),
                    ingest_pb2.Event(
                        message_id="m-bob",
                        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                        user_id="bob",
                        traits=orjson.dumps({"plan": "pro", "email": "bob@example.com"}),
                    ),
                ]
            ),
            metadata=bearer(workspace.ingest),
        )
        assert sent.accepted == 3
        bob_seq = sent.results[2].seq
        await segmentation.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="pro",
                    definition=orjson.dumps(
                        {"trait": {"name": "plan", "op": "eq", "value": "pro"}}
                    ),
                )
            ),
            metadata=admin,
        )
        assert (await wait_live(segmentation, "pro", admin)).size == 2
        ada_id = common_pb2.Identifier(type="user_id", value="ada")
        ada = await profiles.GetProfile(
            profile_pb2.GetProfileRequest(identifier=ada_id), metadata=bearer(workspace.profile)
        )
        had = {(i.type, i.value) for i in ada.identifiers}
        assert {("user_id", "ada"), ("anonymous_id", "anon-ada")} <= had
        before = await resources.redis.xrange(EVENTS_STREAM)
        assert any(b"ada" in fields.get(b"event", b"") for _, fields in before)

        await profiles.DeleteProfile(
            profile_pb2.DeleteProfileRequest(identifier=ada_id), metadata=admin
        )

        # A sync reading the change log later can still name her to a destination.
        changes = []
        call = segmentation.WatchChanges(
            segmentation_pb2.WatchChangesRequest(after_seq=0), metadata=admin
        )
        try:
            while len(changes) < 3:
                changes.append(await asyncio.wait_for(call.read(), timeout=10))
        finally:
            call.cancel()
        exits = [c for c in changes if c.kind == segmentation_pb2.CHANGE_KIND_EXITED]
        assert len(exits) == 1
        assert exits[0].profile.profile_id == ada.profile_id
        assert {(i.type, i.value) for i in exits[0].profile.identifiers} == had

    # Her events' entries are gone from the stream; Bob's stays as it was.
    after = await resources.redis.xrange(EVENTS_STREAM)
    events_left = [(i.decode(), f) for i, f in after if f[b"kind"] == b"event"]
    assert not any(b"ada" in fields[b"event"] for _, fields in events_left)
    assert [i for i, _ in events_left] == [f"{bob_seq}-0"]
    assert [f for i, f in before if i.decode() == f"{bob_seq}-0"] == [f for _, f in events_left]
