"""Erasing a profile takes the person out of every audience they were in, with an
`exited` change record that syncs will read."""

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
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration


async def test_delete_profile_exits_every_audience(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(workspace.admin)
    async with in_process(resources, ["ingest", "segmentation", "profile"]) as addresses:
        async with (
            grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
            grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation_channel,
            grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
        ):
            ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
            segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
            profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
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
