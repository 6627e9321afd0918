"""Training, metrics and scoring through the real prediction service, on simulated
behaviour with a planted signal (planted.py): product views predict purchases."""

from __future__ import annotations

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
import sqlalchemy as sa
from audiences.v1 import common_pb2, prediction_pb2, profile_pb2, profile_pb2_grpc

from services.segmentation import tables as seg
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.db.tables import prediction_scores
from services.shared.errors import field_violations
from services.shared.hotstate import identity_key, profile_key
from services.shared.server import Resources
from services.shared.timestamps import timestamp_from_us
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.integration.prediction.conftest import PredictionApi
from tests.integration.prediction.planted import plant

GOAL = {"event": "purchase"}


async def train(api: PredictionApi, key: str = "buy") -> prediction_pb2.PredictionMetrics:
    reply = await api.stub.Train(prediction_pb2.TrainRequest(key=key), metadata=api.metadata)
    return reply.metrics


async def test_model_beats_the_baseline_and_is_calibrated(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api = prediction_api
    await plant(resources.engine, api.workspace_id, clock.now_us(), profile_count=2_000, days=49)
    await api.create("buy", GOAL)

    metrics = await train(api)

    assert metrics.model_version == 1
    # Eight cutoffs a week apart from a week ago; the history began 7 weeks ago, so the
    # two earliest have no profiles yet.
    assert metrics.snapshots == 6
    assert metrics.cutoff.ToMicroseconds() == clock.now_us() - 7 * US_PER_DAY
    assert metrics.test_rows > 300
    # The planted signal is recent product views: the model finds it and beats a
    # baseline that only knows recency and frequency.
    assert metrics.roc_auc > metrics.baseline.roc_auc
    assert metrics.roc_auc > 0.8
    assert metrics.pr_auc > metrics.baseline.pr_auc
    assert metrics.log_loss < metrics.baseline.log_loss
    assert metrics.feature_importance[0].feature.startswith("view_product count")
    gains = {f.feature: f.gain for f in metrics.feature_importance}
    assert gains["trait plan"] > 0  # the planted plan effect, learnt from a category
    assert metrics.top_decile_lift > 2
    assert 0 < metrics.top_decile_precision <= 1
    # Calibrated: over the held-out rows, the mean probability is the actual rate.
    bins = metrics.calibration
    assert len(bins) == 10
    rows = sum(b.count for b in bins)
    predicted = sum(b.mean_predicted * b.count for b in bins) / rows
    actual = sum(b.actual_rate * b.count for b in bins) / rows
    assert abs(predicted - actual) < 0.05
    assert bins[-1].actual_rate > bins[0].actual_rate
    assert 0 < metrics.brier < metrics.baseline.brier + 0.01

    got = await api.get("buy")
    assert (got.state, got.model_version) == ("ready", 1)
    assert got.trained_at.ToMicroseconds() == clock.now_us()

    # Every training is a new version; GetMetrics answers the current one.
    clock.set(clock.now_us() + US_PER_DAY)
    again = await train(api)
    stored = await api.stub.GetMetrics(
        prediction_pb2.GetMetricsRequest(key="buy"), metadata=api.metadata
    )
    assert again.model_version == stored.model_version == 2
    assert stored.roc_auc == again.roc_auc


async def test_too_little_data_is_failed_precondition_with_the_counts(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api = prediction_api
    await plant(resources.engine, api.workspace_id, clock.now_us(), profile_count=120, days=30)
    await api.create("buy", GOAL)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await train(api)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.value.details() or ""
    assert "positive" in details and "negative" in details and "at least 100" in details
    got = await api.get("buy")
    assert (got.state, got.model_version) == ("untrained", 0)


async def test_cutoff_without_complete_labels_is_refused(prediction_api: PredictionApi) -> None:
    api = prediction_api
    await api.create("buy", GOAL)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.stub.Train(
            prediction_pb2.TrainRequest(
                key="buy", cutoff=timestamp_from_us(1_735_689_600_000_000 - US_PER_DAY)
            ),
            metadata=api.metadata,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error.value)] == ["cutoff"]


async def test_scores_in_postgres_hot_state_list_scores_and_get_profile(
    prediction_api: PredictionApi,
    resources: Resources,
    clock: FixedClock,
    workspace: WorkspaceKeys,
    redis_url: str,
) -> None:
    api = prediction_api
    ws = api.workspace_id
    planted = await plant(resources.engine, ws, clock.now_us(), profile_count=2_000, days=42)
    await api.create("buy", GOAL)
    await train(api)

    scored = await api.stub.Score(prediction_pb2.ScoreRequest(key="buy"), metadata=api.metadata)
    assert scored.scored == len(planted.profile_ids)
    async with resources.engine.connect() as c:
        rows = (
            await c.execute(sa.select(prediction_scores).where(prediction_scores.c.key == "buy"))
        ).all()
    assert len(rows) == scored.scored
    assert all(0 <= r.probability <= 1 and 0 < r.percentile <= 100 for r in rows)

    top: list[prediction_pb2.ScoredProfile] = []
    token = ""
    while True:
        page = await api.stub.ListScores(
            prediction_pb2.ListScoresRequest(
                key="buy", min_percentile=90, page_size=50, page_token=token
            ),
            metadata=api.metadata,
        )
        top.extend(page.scores)
        token = page.next_page_token
        if not token:
            break
    expected = [r for r in rows if r.percentile >= 90]
    assert len(top) == len(expected)
    assert 0.05 * len(rows) <= len(top) <= 0.15 * len(rows)
    percentiles = [s.percentile for s in top]
    assert percentiles == sorted(percentiles, reverse=True)
    best = top[0]
    assert best.probability == max(r.probability for r in rows)
    assert best.reasons and any("view_product" in reason for reason in best.reasons)
    assert [(i.type, i.value) for i in best.profile.identifiers] == [
        ("user_id", f"u{best.profile.profile_id}")
    ]

    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        hot = orjson.loads(
            await client.hget(profile_key(ws, best.profile.profile_id, "predictions"), "buy")
        )
        assert hot["probability"] == pytest.approx(best.probability)
        assert hot["percentile"] == pytest.approx(best.percentile)
        assert hot["top_features"] == list(best.reasons)
        # What ingest would have written for this person, so GetProfile can find them.
        await client.set(
            identity_key(ws, "user_id", f"u{best.profile.profile_id}"), best.profile.profile_id
        )
    finally:
        await client.aclose()
    async with in_process(resources, ["profile"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["profile"]) as channel:
            profile = await profile_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                profile_pb2.GetProfileRequest(
                    identifier=common_pb2.Identifier(
                        type="user_id", value=f"u{best.profile.profile_id}"
                    )
                ),
                metadata=bearer(workspace.profile),
            )
    [prediction] = profile.predictions
    assert prediction.key == "buy"
    assert prediction.probability == pytest.approx(best.probability)
    assert list(prediction.top_features) == list(best.reasons)


async def test_delete_removes_scores_everywhere(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock, redis_url: str
) -> None:
    api = prediction_api
    ws = api.workspace_id
    planted = await plant(resources.engine, ws, clock.now_us(), profile_count=1_500, days=42)
    await api.create("buy", GOAL)
    await train(api)
    await api.stub.Score(prediction_pb2.ScoreRequest(key="buy"), metadata=api.metadata)
    pid = planted.profile_ids[0]
    client = redis_asyncio.Redis.from_url(redis_url)
    assert await client.hget(profile_key(ws, pid, "predictions"), "buy") is not None
    await api.stub.DeletePrediction(
        prediction_pb2.DeletePredictionRequest(key="buy"), metadata=api.metadata
    )
    async with resources.engine.connect() as c:
        left = (
            await c.execute(sa.select(sa.func.count()).select_from(prediction_scores))
        ).scalar_one()
    assert left == 0
    try:
        assert await client.hget(profile_key(ws, pid, "predictions"), "buy") is None
    finally:
        await client.aclose()


async def test_a_population_audience_limits_training_and_scoring(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api = prediction_api
    ws = api.workspace_id
    planted = await plant(resources.engine, ws, clock.now_us(), profile_count=1_000, days=35)
    members = set(planted.profile_ids[::2])
    async with resources.engine.begin() as c:
        audience_id = (
            await c.execute(
                sa.insert(seg.audiences)
                .values(
                    workspace_id=ws,
                    key="half",
                    name="half",
                    created_at_us=clock.now_us(),
                    updated_at_us=clock.now_us(),
                )
                .returning(seg.audiences.c.audience_id)
            )
        ).scalar_one()
        await c.execute(
            sa.insert(seg.memberships),
            [
                {
                    "workspace_id": ws,
                    "audience_id": audience_id,
                    "profile_id": pid,
                    "entered_at_us": clock.now_us(),
                }
                for pid in members
            ],
        )
    await api.create("buy", GOAL, population="half")
    metrics = await train(api)
    assert metrics.train_rows + metrics.test_rows < 0.9 * len(members) * metrics.snapshots
    scored = await api.stub.Score(prediction_pb2.ScoreRequest(key="buy"), metadata=api.metadata)
    assert scored.scored == len(members)
    async with resources.engine.connect() as c:
        scored_ids = set(
            (
                await c.execute(
                    sa.select(prediction_scores.c.profile_id).where(
                        prediction_scores.c.key == "buy"
                    )
                )
            ).scalars()
        )
    assert scored_ids == members
