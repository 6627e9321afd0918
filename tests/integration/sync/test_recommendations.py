"""Recommendation syncs: the profile service trains an object on a small shop, and a
sync of the object sends each profile's top-N item ids to a webhook, a file and Braze
(as a custom attribute); a second run sends nothing, a retraining that changes some
lists sends exactly those, an emptied list is sent once as [], and a refused first
attempt is retried under the same idempotency key. Real Postgres and Redis, the
profile and sync services on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import profile_pb2, profile_pb2_grpc, sync_pb2, sync_pb2_grpc
from sqlalchemy import delete

from services.shared import hotstate
from services.shared.db.tables import recommendation_lists
from services.shared.errors import field_violations
from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.helpers.syncs import create_webhook_destination
from tests.integration.profile.seeding import seed_events
from tests.integration.profile.test_recommendations import (
    CATALOGUE,
    MINUTE,
    T0,
    recommended,
    shop,
    shop_model,
    train,
)
from tests.integration.sync.support import vendor, webhook

pytestmark = pytest.mark.integration

SECRET = "recs-hook"
USERS = ("u1", "u2", "u3", "u4", "u5", "target", "cold")


@dataclass
class Apis:
    sync: sync_pb2_grpc.SyncServiceStub
    profile: profile_pb2_grpc.ProfileServiceStub
    admin: tuple[tuple[str, str], ...]
    keys: WorkspaceKeys

    async def lists(self) -> dict[str, list[str]]:
        """Every user's items of the `shop` object, as GetRecommendations serves them."""
        return {
            u: await recommended(self.profile, self.keys.profile, u, model_key="shop")
            for u in USERS
        }

    async def recommendation_sync(
        self, destination_id: str, key: str = "shop", item_metadata: bool = False
    ) -> sync_pb2.Sync:
        return await self.sync.CreateSync(
            sync_pb2.CreateSyncRequest(
                sync=sync_pb2.Sync(
                    destination_id=destination_id,
                    source=sync_pb2.SYNC_SOURCE_RECOMMENDATION,
                    source_key=key,
                    id_type="user_id",
                    cadence=sync_pb2.SYNC_CADENCE_DAILY,
                    item_metadata=item_metadata,
                )
            ),
            metadata=self.admin,
        )

    async def run(self, sync_id: str) -> sync_pb2.SyncRun:
        return await self.sync.RunSync(sync_pb2.RunSyncRequest(id=sync_id), metadata=self.admin)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def apis(
    resources: Resources,
    workspace: WorkspaceKeys,
    secret_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Apis]:
    monkeypatch.setenv("PROFILE_HTTP_PORT", "0")
    monkeypatch.setenv("RECOMMENDATIONS_SCHEDULE_SECONDS", "0")
    async with (
        in_process(resources, ["profile", "sync"]) as at,
        channel(at["sync"]) as sync_ch,
        channel(at["profile"]) as profile_ch,
    ):
        apis = Apis(
            sync_pb2_grpc.SyncServiceStub(sync_ch),
            profile_pb2_grpc.ProfileServiceStub(profile_ch),
            bearer(workspace.admin),
            workspace,
        )
        await apis.profile.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=shop_model(size=3)),
            metadata=apis.admin,
        )
        yield apis


async def test_each_profile_list_is_sent_once_and_then_only_when_it_changes(
    apis: Apis, resources: Resources, workspace: WorkspaceKeys, redis: redis_asyncio.Redis
) -> None:
    ws = workspace.workspace_id
    pids = await shop(resources, redis, ws)
    await train(apis.profile, workspace.admin)
    before = await apis.lists()
    assert all(before.values()) and before["target"][:2] == ["p2", "p3"]

    # The first attempt is refused with a 503 and retried under the same key.
    async with webhook(SECRET, [(503, {}, 0.0)]) as hook:
        destination = await create_webhook_destination(
            apis.sync, apis.admin, hook.url, SECRET, batch_size=3
        )
        sync = await apis.recommendation_sync(destination.id)
        first = await apis.run(sync.id)
        assert (first.status, first.added, first.skipped, first.retries) == (
            "succeeded",
            len(USERS),
            0,
            1,
        )
        assert {c["id"]: c["value"] for c in hook.applied} == before
        assert len(hook.applied) == len(USERS)  # each profile's list once
        body = hook.requests[-1].json
        assert (body["source"], body["key"], body["id_type"]) == (
            "recommendation",
            "shop",
            "user_id",
        )
        assert all(c["action"] == "set" for c in body["changes"])
        keys = [r.headers["Idempotency-Key"] for r in hook.requests]
        assert keys[0] == keys[1] and len(set(keys)) == len(keys) - 1

        # Nothing changed: nothing is sent.
        requests = len(hook.requests)
        again = await apis.run(sync.id)
        assert (again.status, again.added, again.batches) == ("succeeded", 0, 0)
        assert len(hook.requests) == requests

        # The cold profile starts buying blenders: its list (and maybe others) change.
        bought = [("Order Completed", "p5"), ("Order Completed", "p5"), ("Product Viewed", "p4")]
        await seed_events(
            resources.engine,
            ws,
            pids["cold"],
            [
                {
                    "message_id": f"cold-{n}",
                    "type": "track",
                    "name": name,
                    "timestamp_us": T0 + (10 + n) * MINUTE,
                    "properties": {"product_id": item, **CATALOGUE[item]},
                }
                for n, (name, item) in enumerate(bought)
            ],
        )
        await train(apis.profile, workspace.admin)
        after = await apis.lists()
        changed = {u for u in USERS if after[u] != before[u]}
        assert "cold" in changed
        applied = len(hook.applied)
        third = await apis.run(sync.id)
        assert third.added == len(changed)
        assert {c["id"]: c["value"] for c in hook.applied[applied:]} == {
            u: after[u] for u in changed
        }

        # The lists are read from the database, not the hot state: with every
        # profile's hot lists gone, a run still finds the same lists (nothing to send).
        for pid in pids.values():
            await redis.delete(hotstate.profile_key(ws, pid, "recs_by_model"))
        assert (await apis.run(sync.id)).added == 0

        # A profile left with no items (as a training that finds none for it leaves it)
        # is sent an empty list, once.
        async with resources.engine.begin() as connection:
            await connection.execute(
                delete(recommendation_lists).where(
                    recommendation_lists.c.workspace_id == ws,
                    recommendation_lists.c.profile_id == pids["u4"],
                )
            )
        applied = len(hook.applied)
        emptied = await apis.run(sync.id)
        assert emptied.added == 1
        assert [(c["id"], c["value"]) for c in hook.applied[applied:]] == [("u4", [])]
        assert (await apis.run(sync.id)).added == 0


async def test_braze_gets_the_list_as_a_custom_attribute(
    apis: Apis, resources: Resources, workspace: WorkspaceKeys, redis: redis_asyncio.Redis
) -> None:
    await shop(resources, redis, workspace.workspace_id)
    await train(apis.profile, workspace.admin)
    lists = await apis.lists()
    assert all(lists.values())

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
                    options={"attribute": "recommended_items"},
                )
            ),
            metadata=apis.admin,
        )
        sync = await apis.recommendation_sync(destination.id)
        done = await apis.run(sync.id)
        assert done.added == len(USERS)
        assert (await apis.run(sync.id)).added == 0
    assert len(braze.requests) == 1  # one request (at most 75 attribute objects)
    path, _, body = braze.requests[0]
    assert path == "/users/track"
    assert sorted(body["attributes"], key=lambda a: a["external_id"]) == [
        {"external_id": u, "recommended_items": lists[u], "_update_existing_only": False}
        for u in sorted(USERS)
    ]


async def test_a_recommendation_sync_needs_an_object_and_a_schedule(apis: Apis) -> None:
    async with webhook(SECRET) as hook:
        destination = await create_webhook_destination(apis.sync, apis.admin, hook.url, SECRET)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await apis.recommendation_sync(destination.id, key="nope")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sync.source_key" in [v.field for v in field_violations(unknown.value)]
        with pytest.raises(grpc.aio.AioRpcError) as realtime:
            await apis.sync.CreateSync(
                sync_pb2.CreateSyncRequest(
                    sync=sync_pb2.Sync(
                        destination_id=destination.id,
                        source=sync_pb2.SYNC_SOURCE_RECOMMENDATION,
                        source_key="shop",
                        id_type="user_id",
                        cadence=sync_pb2.SYNC_CADENCE_REALTIME,
                    )
                ),
                metadata=apis.admin,
            )
        assert "sync.cadence" in [v.field for v in field_violations(realtime.value)]
        with pytest.raises(grpc.aio.AioRpcError) as not_recommendations:
            await apis.sync.CreateSync(
                sync_pb2.CreateSyncRequest(
                    sync=sync_pb2.Sync(
                        destination_id=destination.id,
                        source=sync_pb2.SYNC_SOURCE_EVENTS,
                        id_type="user_id",
                        cadence=sync_pb2.SYNC_CADENCE_REALTIME,
                        item_metadata=True,
                    )
                ),
                metadata=apis.admin,
            )
        assert [v.field for v in field_violations(not_recommendations.value)] == [
            "sync.item_metadata"
        ]


async def test_a_file_gets_every_list_then_an_empty_file(
    apis: Apis,
    resources: Resources,
    workspace: WorkspaceKeys,
    redis: redis_asyncio.Redis,
    tmp_path: Path,
) -> None:
    await shop(resources, redis, workspace.workspace_id)
    await train(apis.profile, workspace.admin)
    lists = await apis.lists()
    destination = await apis.sync.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="file",
                kind=sync_pb2.DESTINATION_KIND_FILE,
                directory=str(tmp_path),
                file_format="jsonl",
                batch_size=2,  # four batches, remembered together once the file is out
            )
        ),
        metadata=apis.admin,
    )
    sync = await apis.recommendation_sync(destination.id)
    first = await apis.run(sync.id)
    second = await apis.run(sync.id)
    assert (first.added, first.batches, second.added) == (len(USERS), 4, 0)
    files = {run.id: tmp_path / f"{sync.id}-{run.id}.jsonl" for run in (first, second)}
    rows = [orjson.loads(line) for line in files[first.id].read_text().splitlines()]
    assert {r["id"]: r["value"] for r in rows} == lists and len(rows) == len(USERS)
    assert files[second.id].read_text() == ""


async def test_items_with_their_metadata_when_the_sync_asks(
    apis: Apis, resources: Resources, workspace: WorkspaceKeys, redis: redis_asyncio.Redis
) -> None:
    await shop(resources, redis, workspace.workspace_id)
    await train(apis.profile, workspace.admin)
    lists = await apis.lists()
    async with webhook(SECRET) as hook:
        destination = await create_webhook_destination(apis.sync, apis.admin, hook.url, SECRET)
        sync = await apis.recommendation_sync(destination.id, item_metadata=True)
        assert sync.item_metadata
        assert (await apis.run(sync.id)).added == len(USERS)
    sent = {c["id"]: c["value"] for c in hook.applied}
    assert {u: [item["item_id"] for item in items] for u, items in sent.items()} == lists
    # The properties of the item's latest event, the item property left out.
    assert sent["target"][0] == {"item_id": "p2", "metadata": {"name": "Teapot", "in_stock": True}}
