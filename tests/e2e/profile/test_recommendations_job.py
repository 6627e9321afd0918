"""The training job as a process: `python -m services.profile.recommendations train`
against real Postgres and Redis, beside a profile service that trains nothing itself
(RECOMMENDATIONS_TRAINING=job): it trains what is due and writes the lists, two
concurrent runs train an object once, an asked-for training waits for the job, and a
failed training or an unknown object exits non-zero."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import profile_pb2, profile_pb2_grpc
from sqlalchemy import func, select

from services.profile.recommendations.definition import TrainingState
from services.profile.recommendations.store import RecommendationStore
from services.shared.config import Settings
from services.shared.db.tables import recommendation_lists
from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.integration.profile.test_recommendations import ident, recommended, shop, shop_model

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Ran:
    """One run of the job: its exit status and output lines."""

    code: int
    lines: list[str]


def start(settings: Settings, *args: str, redis_url: str | None = None) -> subprocess.Popen[str]:
    """Start the training job as its own process."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": redis_url or settings.redis_url or "",
        "OTEL_TRACES_EXPORTER": "none",
        "RECOMMENDATIONS_TRAINING": "job",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.profile.recommendations", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def finished(process: subprocess.Popen[str]) -> Ran:
    """Wait for the process (in a thread: the test's loop keeps running)."""
    out, _ = await asyncio.to_thread(process.communicate, timeout=300)
    return Ran(process.returncode, out.splitlines())


async def run(settings: Settings, *args: str, redis_url: str | None = None) -> Ran:
    return await finished(start(settings, *args, redis_url=redis_url))


def said(ran: Ran, text: str) -> bool:
    return any(text in line for line in ran.lines)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def profile_stub(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[profile_pb2_grpc.ProfileServiceStub]:
    """The profile service with trainings left to the job."""
    monkeypatch.setenv("PROFILE_HTTP_PORT", "0")
    monkeypatch.setenv("RECOMMENDATIONS_TRAINING", "job")
    async with in_process(resources, ["profile"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["profile"]) as channel:
            yield profile_pb2_grpc.ProfileServiceStub(channel)


async def stored_lists(resources: Resources, ws: str) -> int:
    async with resources.engine.connect() as connection:
        found = await connection.execute(
            select(func.count()).where(recommendation_lists.c.workspace_id == ws)
        )
        return int(found.scalar_one())


async def test_the_job_trains_what_is_due_once_however_many_run(
    profile_stub, resources: Resources, settings: Settings, workspace: WorkspaceKeys, redis
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    admin = bearer(workspace.admin)
    pids = await shop(resources, redis, ws)
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model(size=3)), metadata=admin
    )
    # Asked for, the training is recorded for the job, not run by the service.
    asked = await profile_stub.TrainRecommendationModel(
        profile_pb2.TrainRecommendationModelRequest(key="shop"), metadata=admin
    )
    assert asked.training.state == profile_pb2.TRAINING_STATE_NEVER_TRAINED
    store = RecommendationStore(resources.engine)
    assert (await store.get(ws, "shop")).training.requested_at_us is not None

    # Two runs at once: the object is trained by exactly one of them.
    runs: Sequence[Ran] = await asyncio.gather(finished(start(settings)), finished(start(settings)))
    assert [r.code for r in runs] == [0, 0], [r.lines for r in runs]
    trained = [r for r in runs if said(r, f"{ws}/shop: succeeded")]
    assert len(trained) == 1, [r.lines for r in runs]
    assert said(trained[0], f"{ws}/shop: training") and said(trained[0], f"{ws}/shop: 100%")
    model = await store.get(ws, "shop")
    assert model.training.state is TrainingState.SUCCEEDED
    assert model.training.requested_at_us is None
    assert (model.training.profiles, model.training.items) == (len(pids), 5)

    # What it wrote is served (the profile's own list) and kept in the database.
    reply = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("target")),
        metadata=bearer(workspace.profile),
    )
    assert reply.recommendations and not reply.cold_start
    assert await stored_lists(resources, ws) == len(pids)

    # Nothing is due right after: a run trains nothing.
    idle = await run(settings)
    assert idle.code == 0 and said(idle, "0 training(s) run"), idle.lines

    # Named, an object trains whether due or not; an unknown one is an error.
    again = await run(settings, "--workspace", ws, "--key", "shop")
    assert again.code == 0 and said(again, f"{ws}/shop: succeeded"), again.lines
    assert await recommended(profile_stub, workspace.profile, "target", model_key="shop")
    unknown = await run(settings, "--workspace", ws, "--key", "nope")
    assert unknown.code == 1 and said(unknown, "not trained"), unknown.lines
    bad = await run(settings, "--key", "shop")
    assert bad.code == 2


async def test_a_failed_training_exits_non_zero_and_is_recorded(
    profile_stub, resources: Resources, settings: Settings, workspace: WorkspaceKeys, redis
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    await shop(resources, redis, ws)
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model(size=3)),
        metadata=bearer(workspace.admin),
    )
    # The hot state is unreachable: the training cannot write its lists there.
    failed = await run(settings, redis_url="redis://127.0.0.1:1/0")
    assert failed.code == 1 and said(failed, f"{ws}/shop: failed"), failed.lines
    model = await RecommendationStore(resources.engine).get(ws, "shop")
    assert model.training.state is TrainingState.FAILED and model.training.error
