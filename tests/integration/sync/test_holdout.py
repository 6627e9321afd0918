"""Audience syncs with `exclude_holdout`: segmentation computes an audience holding out
half its members, and the sync delivers exactly the members `in_holdout` leaves in
treatment (on the backfill and on later entries), while a sync without the flag
delivers every member."""

from __future__ import annotations

import time

import grpc
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
from services.shared.holdout import in_holdout
from services.shared.server import Resources
from services.shared.timestamps import timestamp_from_us
from tests.conftest import WorkspaceKeys
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.helpers.syncs import create_webhook_sync
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.integration

SECRET = "holdout-sync"
PRO = {"trait": {"name": "plan", "op": "eq", "value": "pro"}}


async def test_exclude_holdout_delivers_only_the_treatment_group(
    resources: Resources, workspace: WorkspaceKeys, clock: FixedClock, secret_key: str
) -> None:
    admin, write = bearer(workspace.admin), bearer(workspace.ingest)
    async with (
        in_process(resources, ["ingest", "segmentation", "sync"]) as at,
        channel(at["ingest"]) as i_ch,
        channel(at["segmentation"]) as s_ch,
        channel(at["sync"]) as y_ch,
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(i_ch)
        seg = segmentation_pb2_grpc.SegmentationServiceStub(s_ch)
        sync_api = sync_pb2_grpc.SyncServiceStub(y_ch)

        async def identify(users: list[str]) -> None:
            events = []
            for user in users:
                event = ingest_pb2.Event(
                    type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                    message_id=f"m{time.monotonic_ns()}",
                    user_id=user,
                    traits=orjson.dumps({"plan": "pro"}),
                )
                event.timestamp.CopyFrom(timestamp_from_us(clock.now_us() - 1_000_000))
                events.append(event)
            reply = await ingest.Batch(ingest_pb2.BatchRequest(events=events), metadata=write)
            assert reply.accepted == len(users)

        async def treatment() -> set[str]:
            """The members' user ids outside the holdout, by segmentation's own API."""
            listed = await seg.ListMembers(
                segmentation_pb2.ListMembersRequest(audience_key="pro", page_size=1000),
                metadata=admin,
            )
            out = set()
            for m in listed.members:
                user = next(i.value for i in m.profile.identifiers if i.type == "user_id")
                if not in_holdout("pro", int(m.profile.profile_id), 0.5):
                    out.add(user)
            return out

        await identify([f"u{n}" for n in range(40)])
        await seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="pro", definition=orjson.dumps(PRO), holdout_share=0.5
                )
            ),
            metadata=admin,
        )
        await wait_live(seg, "pro", admin)

        async with webhook(SECRET) as held, webhook(SECRET) as everyone:
            excluding = await create_webhook_sync(
                sync_api, admin, held.url, SECRET, "pro", exclude_holdout=True
            )
            plain = await create_webhook_sync(sync_api, admin, everyone.url, SECRET, "pro")
            got = await sync_api.GetSync(sync_pb2.GetSyncRequest(id=excluding.id), metadata=admin)
            assert excluding.exclude_holdout and got.exclude_holdout
            listed = await sync_api.ListSyncs(sync_pb2.ListSyncsRequest(), metadata=admin)
            assert {s.id: s.exclude_holdout for s in listed.syncs} == {
                excluding.id: True,
                plain.id: False,
            }

            # Fixed once created: turning it on later is refused, and changes nothing.
            turn_on = sync_pb2.Sync()
            turn_on.CopyFrom(plain)
            turn_on.exclude_holdout = True
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sync_api.UpdateSync(sync_pb2.UpdateSyncRequest(sync=turn_on), metadata=admin)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            again = await sync_api.GetSync(sync_pb2.GetSyncRequest(id=plain.id), metadata=admin)
            assert not again.exclude_holdout

            expected = await treatment()
            # Half, give or take: both groups are non-empty, so the test means something.
            assert 0 < len(expected) < 40
            first = await sync_api.RunSync(sync_pb2.RunSyncRequest(id=excluding.id), metadata=admin)
            assert {c["id"] for c in held.applied} == expected
            assert (first.added, first.skipped) == (len(expected), 40 - len(expected))
            whole = await sync_api.RunSync(sync_pb2.RunSyncRequest(id=plain.id), metadata=admin)
            assert {c["id"] for c in everyone.applied} == {f"u{n}" for n in range(40)}
            assert (whole.added, whole.skipped) == (40, 0)

            # Entries after the backfill: the held-out newcomers are left out too.
            await identify([f"u{n}" for n in range(40, 60)])
            await seg.Recompute(
                segmentation_pb2.RecomputeRequest(audience_key="pro"), metadata=admin
            )
            later = await treatment()
            second = await sync_api.RunSync(
                sync_pb2.RunSyncRequest(id=excluding.id), metadata=admin
            )
            assert {c["id"] for c in held.applied} == later
            assert (second.added, second.skipped) == (
                len(later - expected),
                20 - len(later - expected),
            )
            assert all(c["action"] == "added" for c in held.applied)
