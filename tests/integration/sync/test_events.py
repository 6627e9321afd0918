"""Event syncs forward raw events from ingest's stream as they arrive: only the types,
names (and audience members) asked for, named by the sync's id type, in order per
profile, each once; people without the id type are skipped; Braze gets its event
objects."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from audiences.v1 import ingest_pb2, ingest_pb2_grpc, sync_pb2, sync_pb2_grpc
from sqlalchemy import select

from services.shared.db.tables import identities
from services.shared.server import Resources
from services.shared.streams import EVENTS_STREAM
from services.shared.timestamps import timestamp_from_us
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.helpers.syncs import create_webhook_destination
from tests.helpers.waiting import eventually
from tests.integration.sync.support import MembershipLog, vendor, webhook

pytestmark = pytest.mark.integration

NOW = 1_735_689_600_000_000
SECRET = "events-hook"
_ids = itertools.count()


@dataclass
class Apis:
    sync: sync_pb2_grpc.SyncServiceStub
    ingest: ingest_pb2_grpc.IngestServiceStub
    admin: tuple[tuple[str, str], ...]
    write: tuple[tuple[str, str], ...]
    log: MembershipLog
    resources: Resources

    async def send(self, *events: tuple[str, str, str]) -> None:
        """(type, user id or 'anon:<id>', event name) each, through ingest's Batch."""
        batch = []
        for kind, who, name in events:
            event = ingest_pb2.Event(
                type=getattr(ingest_pb2, f"EVENT_TYPE_{kind.upper()}"),
                message_id=f"ev-{next(_ids)}",
            )
            if who.startswith("anon:"):
                event.anonymous_id = who[5:]
            else:
                event.user_id = who
            if kind == "track":
                event.event = name
            event.timestamp.CopyFrom(timestamp_from_us(NOW - 3_600_000_000))
            batch.append(event)
        reply = await self.ingest.Batch(ingest_pb2.BatchRequest(events=batch), metadata=self.write)
        assert reply.accepted == len(batch), reply

    async def event_sync(
        self, destination_id: str, names: list[str], audience: str = ""
    ) -> sync_pb2.Sync:
        """A realtime event sync of track events with these names, started."""
        sync = await self.sync.CreateSync(
            sync_pb2.CreateSyncRequest(
                sync=sync_pb2.Sync(
                    destination_id=destination_id,
                    source=sync_pb2.SYNC_SOURCE_EVENTS,
                    source_key=audience,
                    id_type="user_id",
                    cadence=sync_pb2.SYNC_CADENCE_REALTIME,
                    event_types=["track"],
                    event_names=names,
                )
            ),
            metadata=self.admin,
        )

        async def started() -> bool:
            runs = await self.sync.ListSyncRuns(
                sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=self.admin
            )
            return any(r.status == "succeeded" for r in runs.runs)

        await eventually(started, 20, "the event sync's first run (its consumer group)")
        return sync

    async def profile_of(self, user_id: str) -> int:
        async with self.resources.engine.connect() as c:
            found = await c.execute(
                select(identities.c.profile_id).where(
                    identities.c.id_type == "user_id", identities.c.id_value == user_id
                )
            )
            return int(found.scalar_one())


@pytest.fixture
async def apis(
    resources: Resources, workspace: WorkspaceKeys, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Apis]:
    from cryptography.fernet import Fernet

    monkeypatch.setenv("SYNC_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("SYNC_SCHEDULER_INTERVAL_SECONDS", "3600")
    monkeypatch.setenv("SYNC_EVENTS_POLL_SECONDS", "0.05")
    async with (
        in_process(resources, ["ingest", "sync"]) as at,
        channel(at["sync"]) as sync_ch,
        channel(at["ingest"]) as ingest_ch,
    ):
        yield Apis(
            sync_pb2_grpc.SyncServiceStub(sync_ch),
            ingest_pb2_grpc.IngestServiceStub(ingest_ch),
            bearer(workspace.admin),
            bearer(workspace.ingest),
            MembershipLog(resources.engine, workspace.workspace_id),
            resources,
        )


async def _webhook_destination(apis: Apis, url: str) -> str:
    destination = await create_webhook_destination(apis.sync, apis.admin, url, SECRET)
    return destination.id


async def test_filtered_events_reach_the_webhook_once_in_order(apis: Apis) -> None:
    vips = await apis.log.audience("vips")
    async with webhook(SECRET, [(503, {}, 0.0)]) as hook:
        destination = await _webhook_destination(apis, hook.url)
        everyone = await apis.event_sync(destination, ["Bought", "Returned"])
        await apis.send(
            ("track", "u1", "Bought"),
            ("track", "u1", "Viewed"),  # another name: not forwarded
            ("identify", "u3", ""),  # another type
            ("track", "anon:a1", "Bought"),  # no user id: skipped
            ("track", "u2", "Bought"),
        )
        await apis.log.change(vips, await apis.profile_of("u2"), entered=True)
        members = await apis.event_sync(destination, ["Bought", "Returned"], audience="vips")
        await apis.send(("track", "u1", "Returned"), ("track", "u2", "Returned"))

        async def forwarded() -> bool:
            return len(hook.applied) >= 5

        await eventually(forwarded, 20, "the forwarded events")

        async def acknowledged() -> bool:
            groups = await apis.resources.redis.xinfo_groups(EVENTS_STREAM)
            names = {f"sync-events:{s.id}" for s in (everyone, members)}
            mine = [g for g in groups if g["name"].decode() in names]
            return len(mine) == 2 and all(g["pending"] == 0 for g in mine)

        await eventually(acknowledged, 20, "every forwarded entry acknowledged")
    by_sync: dict[str, list[tuple[str, str]]] = {}
    seen_keys: set[str] = set()
    for request in hook.requests:
        key = request.headers["Idempotency-Key"]
        body = request.json
        if key in seen_keys or "events" not in body:
            continue
        seen_keys.add(key)
        by_sync.setdefault(body["sync_id"], []).extend((e["id"], e["name"]) for e in body["events"])
    assert by_sync[everyone.id] == [
        ("u1", "Bought"),
        ("u2", "Bought"),
        ("u1", "Returned"),
        ("u2", "Returned"),
    ]
    assert by_sync[members.id] == [("u2", "Returned")]  # only the audience's member
    runs = await apis.sync.ListSyncRuns(
        sync_pb2.ListSyncRunsRequest(sync_id=everyone.id), metadata=apis.admin
    )
    assert sum(r.skipped for r in runs.runs) == 1  # the anonymous purchase
    assert sum(r.retries for r in runs.runs) == 1  # the 503


async def test_braze_receives_event_objects(apis: Apis) -> None:
    def ok(path: str, body: object) -> tuple[int, object]:
        return 201, {"message": "success"}

    async with vendor(ok) as braze:
        destination = await apis.sync.CreateDestination(
            sync_pb2.CreateDestinationRequest(
                destination=sync_pb2.Destination(
                    name="braze",
                    kind=sync_pb2.DESTINATION_KIND_BRAZE,
                    base_url=braze.url,
                    secret="rest-key",
                )
            ),
            metadata=apis.admin,
        )
        await apis.event_sync(destination.id, ["Bought"])
        await apis.send(("track", "u9", "Bought"))

        async def sent() -> bool:
            return bool(braze.requests)

        await eventually(sent, 20, "the Braze request")
    path, _, body = braze.requests[0]
    assert path == "/users/track"
    assert body == {
        "events": [
            {
                "external_id": "u9",
                "name": "Bought",
                "time": "2024-12-31T23:00:00+00:00",
                "properties": {},
            }
        ]
    }
