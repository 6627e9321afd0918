"""The read model against the real writer: events go in through ingest, segmentation
computes the audience and its change log, and sync delivers and exports what
segmentation's own API reports."""

from __future__ import annotations

import csv
import io
import time

import orjson
import pytest
from audiences.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)

from services.shared.clock import FixedClock
from services.shared.server import Resources
from services.shared.timestamps import timestamp_from_us
from tests.conftest import WorkspaceKeys
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.helpers.syncs import create_webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "segmentation-end-to-end"
PRO = {"trait": {"name": "plan", "op": "eq", "value": "pro"}}


async def test_sync_delivers_and_exports_what_segmentation_computed(
    resources: Resources, workspace: WorkspaceKeys, clock: FixedClock, secret_key: str
) -> None:
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    names = ["ingest", "segmentation", "sync"]
    async with (
        in_process(resources, names) as at,
        channel(at["ingest"]) as i_ch,
        channel(at["segmentation"]) as s_ch,
        channel(at["sync"]) as y_ch,
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(i_ch)
        seg = segmentation_pb2_grpc.SegmentationServiceStub(s_ch)
        sync_api = sync_pb2_grpc.SyncServiceStub(y_ch)

        async def identify(user_id: str, plan: str) -> None:
            event = ingest_pb2.Event(
                type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                message_id=f"m{time.monotonic_ns()}",
                user_id=user_id,
                traits=orjson.dumps({"plan": plan}),
            )
            event.timestamp.CopyFrom(timestamp_from_us(clock.now_us() - 1_000_000))
            reply = await ingest.Batch(ingest_pb2.BatchRequest(events=[event]), metadata=write)
            assert reply.accepted == 1

        for user, plan in (("u1", "pro"), ("u2", "pro"), ("u3", "free")):
            await identify(user, plan)
        await seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(key="pro", definition=orjson.dumps(PRO))
            ),
            metadata=admin,
        )
        await wait_live(seg, "pro", admin)

        async with webhook(SECRET) as receiver:
            sync = await create_webhook_sync(
                sync_api, admin, receiver.url, SECRET, "pro", cadence=sync_pb2.SYNC_CADENCE_ONE_TIME
            )
            first = await sync_api.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=admin)
            assert sorted(c["id"] for c in receiver.applied) == ["u1", "u2"]
            assert first.added == 2

            await identify("u3", "pro")
            await identify("u1", "free")
            await seg.Recompute(
                segmentation_pb2.RecomputeRequest(audience_key="pro"), metadata=admin
            )
            second = await sync_api.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=admin)
            assert sorted((c["action"], c["id"]) for c in receiver.applied[2:]) == [
                ("added", "u3"),
                ("removed", "u1"),
            ]
            assert (second.added, second.removed) == (1, 1)

        members = await seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key="pro"), metadata=admin
        )
        listed = sorted(
            next(i.value for i in m.profile.identifiers if i.type == "user_id")
            for m in members.members
        )
        chunks = [
            c
            async for c in sync_api.ExportAudience(
                sync_pb2.ExportAudienceRequest(
                    audience_key="pro",
                    format=sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN,
                    id_type="user_id",
                    raw=True,
                ),
                metadata=admin,
            )
        ]
        exported = list(csv.DictReader(io.StringIO(b"".join(c.csv for c in chunks).decode())))
        assert sorted(r["user_id"] for r in exported) == listed == ["u2", "u3"]
