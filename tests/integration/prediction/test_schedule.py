"""Scheduled training and scoring on real Postgres and Redis: what is due runs once,
the job lease keeps a second replica out, and a prediction with too little data waits
for its next turn."""

from __future__ import annotations

import grpc
import pytest
from audiences.v1 import prediction_pb2

from services.prediction.app import domain
from services.prediction.features_sql import FeatureQueries
from services.prediction.hot import PredictionHotState
from services.prediction.model import Progress
from services.prediction.scheduler import Job, Scheduler
from services.prediction.service import Predictions
from services.prediction.store import PredictionStore
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.server import Resources
from tests.integration.prediction.conftest import PredictionApi
from tests.integration.prediction.planted import plant

HOUR = 3_600_000_000


def scheduler(resources: Resources, clock: FixedClock, owner: str | None = None) -> Scheduler:
    store = PredictionStore(resources.engine)
    predictions = (
        domain(resources)
        if owner is None
        else Predictions(
            store,
            FeatureQueries(resources.engine),
            PredictionHotState(resources.redis),
            clock,
            owner=owner,
        )
    )
    return Scheduler(predictions, store, clock)


async def test_due_jobs_run_once_then_on_their_cadence(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api = prediction_api
    ws = api.workspace_id
    await plant(resources.engine, ws, clock.now_us(), profile_count=800, days=35)
    await api.create("buy", {"event": "purchase"})
    rounds = scheduler(resources, clock)

    assert await rounds.run_due() == [Job(ws, "buy", "trained"), Job(ws, "buy", "scored")]
    assert await rounds.run_due() == []
    got = await api.get("buy")
    assert (got.progress.done, got.progress.total, got.progress.stage) == (3, 3, "scored")
    first_scoring = got.scored_at.ToMicroseconds()

    clock.set(clock.now_us() + HOUR)
    assert await rounds.run_due() == [Job(ws, "buy", "scored")]
    got = await api.get("buy")
    assert got.scored_at.ToMicroseconds() == first_scoring + HOUR
    assert got.model_version == 1

    clock.set(clock.now_us() + US_PER_DAY)
    assert await rounds.run_due() == [Job(ws, "buy", "trained"), Job(ws, "buy", "scored")]
    got = await api.get("buy")
    assert got.model_version == 2


async def test_a_held_lease_keeps_other_replicas_out_until_it_expires(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api = prediction_api
    ws = api.workspace_id
    await plant(resources.engine, ws, clock.now_us(), profile_count=800, days=35)
    created = await api.create("buy", {"event": "purchase"})
    store = PredictionStore(resources.engine)
    record = await store.get(ws, created.key)
    assert record is not None
    # Another replica's job holds the lease for ten minutes.
    now = clock.now_us()
    assert await store.acquire_lease(record.prediction_id, "replica-b", now, now + 600_000_000)
    await store.progress(
        record.prediction_id, "replica-b", now + 600_000_000, Progress(1, 5, "features")
    )

    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await api.stub.Train(prediction_pb2.TrainRequest(key="buy"), metadata=api.metadata)
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "busy" in (busy.value.details() or "")
    got = await api.get("buy")
    assert (got.progress.done, got.progress.total, got.progress.stage) == (1, 5, "features")
    assert await scheduler(resources, clock, owner="replica-a").run_due() == []
    assert not await store.acquire_lease(record.prediction_id, "replica-c", now, now + 1)

    # Replica b died: once its lease has run out, replica a takes the job over.
    clock.set(now + 600_000_001)
    done = await scheduler(resources, clock, owner="replica-a").run_due()
    assert done == [Job(ws, "buy", "trained"), Job(ws, "buy", "scored")]


async def test_too_little_data_waits_for_its_next_turn(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api = prediction_api
    await plant(resources.engine, api.workspace_id, clock.now_us(), profile_count=100, days=30)
    await api.create("buy", {"event": "purchase"})
    rounds = scheduler(resources, clock)
    assert await rounds.run_due() == []
    got = await api.get("buy")
    assert (got.state, got.progress.stage) == ("untrained", "too little data")
    clock.set(clock.now_us() + HOUR)
    assert await rounds.run_due() == []
    store = PredictionStore(resources.engine)
    record = await store.get(api.workspace_id, "buy")
    assert record is not None and record.attempted_at_us == clock.now_us() - HOUR
