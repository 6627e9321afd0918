"""Recommendation syncs through the real processes: the profile service trains an
object on a small shop, the sync service's scheduler runs a daily sync of it (due at
creation) and a webhook receives each profile's list as GetRecommendations serves it,
each once; a run asked for afterwards sends nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import profile_pb2, profile_pb2_grpc, sync_pb2, sync_pb2_grpc
from cryptography.fernet import Fernet

from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import as_processes
from tests.helpers.syncs import create_webhook_destination
from tests.helpers.waiting import eventually
from tests.integration.profile.test_recommendations import recommended, shop, shop_model, train
from tests.integration.sync.support import webhook

pytestmark = pytest.mark.e2e

CLOCK_KEY = "test:clock"
NOW = 1_735_689_600_000_000  # 2025-01-01, a few days after the shop's events
SECRET = "recs-e2e"
ENV = {
    "CLOCK_REDIS_KEY": CLOCK_KEY,
    "SYNC_SECRET_KEY": Fernet.generate_key().decode(),
    "SYNC_SCHEDULER_INTERVAL_SECONDS": "0.2",
    "RECOMMENDATIONS_SCHEDULE_SECONDS": "0",
}


@pytest.fixture
async def redis(redis_url: str, resources: Resources) -> AsyncIterator[redis_asyncio.Redis]:
    """Redis with every process's clock at NOW (after `resources` emptied it)."""
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.set(CLOCK_KEY, NOW)
    yield client
    await client.aclose()


async def test_a_scheduled_recommendation_sync_sends_each_list_once(
    database_url: str,
    redis_url: str,
    resources: Resources,
    workspace: WorkspaceKeys,
    redis: redis_asyncio.Redis,
) -> None:
    admin = bearer(workspace.admin)
    people = await shop(resources, redis, workspace.workspace_id)
    async with (
        webhook(SECRET) as hook,
        as_processes(database_url, redis_url, ["profile", "sync"], ENV) as at,
        grpc.aio.insecure_channel(at["profile"]) as profile_channel,
        grpc.aio.insecure_channel(at["sync"]) as sync_channel,
    ):
        profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        sync_api = sync_pb2_grpc.SyncServiceStub(sync_channel)
        await profile.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=shop_model(size=3)),
            metadata=admin,
        )
        await train(profile, workspace.admin)
        lists = {
            user: await recommended(profile, workspace.profile, user, model_key="shop")
            for user in people
        }
        assert all(lists.values())
        destination = await create_webhook_destination(
            sync_api, admin, hook.url, SECRET, batch_size=2
        )
        sync = await sync_api.CreateSync(
            sync_pb2.CreateSyncRequest(
                sync=sync_pb2.Sync(
                    destination_id=destination.id,
                    source=sync_pb2.SYNC_SOURCE_RECOMMENDATION,
                    source_key="shop",
                    id_type="user_id",
                    cadence=sync_pb2.SYNC_CADENCE_DAILY,
                )
            ),
            metadata=admin,
        )

        async def scheduled() -> sync_pb2.SyncRun | None:
            runs = await sync_api.ListSyncRuns(
                sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=admin
            )
            return next((r for r in runs.runs if r.status == "succeeded"), None)

        first = await eventually(scheduled, 30, "the scheduler's run of the daily sync")
        assert first.added == len(people)
        requests = len(hook.requests)
        again = await sync_api.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=admin)
        assert (again.status, again.added, again.batches) == ("succeeded", 0, 0)
        assert len(hook.requests) == requests
    assert {c["id"]: c["value"] for c in hook.applied} == lists
    assert len(hook.applied) == len(people)
    keys = [r.headers["Idempotency-Key"] for r in hook.requests]
    assert len(keys) == len(set(keys)) == 4  # seven lists in batches of two
