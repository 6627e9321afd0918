"""A predictive cohort through the real prediction and segmentation processes: a
prediction created, trained and scored over simulated behaviour, then an audience of
the top tenth (`percentile gte 90`) whose members are exactly the profiles scored there."""

from __future__ import annotations

import time

import grpc
import orjson
import pytest
import sqlalchemy as sa
from audiences.v1 import (
    prediction_pb2,
    prediction_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.shared.db.engine import create_engine
from services.shared.db.tables import prediction_scores
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually
from tests.integration.prediction.planted import plant

pytestmark = pytest.mark.e2e


async def test_top_decile_audience_through_the_processes(
    database_url: str, redis_url: str, workspace: WorkspaceKeys
) -> None:
    ws, admin = workspace.workspace_id, bearer(workspace.admin)
    engine = create_engine(database_url)
    try:
        # The processes run on the wall clock, so the history ends now.
        await plant(engine, ws, int(time.time() * 1e6), profile_count=1_500, days=42)
    finally:
        await engine.dispose()
    async with (
        as_processes(database_url, redis_url, ["prediction", "segmentation"]) as addresses,
        grpc.aio.insecure_channel(addresses["prediction"]) as prediction_channel,
        grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation_channel,
    ):
        predictions = prediction_pb2_grpc.PredictionServiceStub(prediction_channel)
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel)
        await predictions.CreatePrediction(
            prediction_pb2.CreatePredictionRequest(
                prediction=prediction_pb2.Prediction(
                    key="will_buy", goal=orjson.dumps({"event": "purchase"})
                )
            ),
            metadata=admin,
        )
        trained = await predictions.Train(
            prediction_pb2.TrainRequest(key="will_buy"), metadata=admin
        )
        assert trained.metrics.roc_auc > trained.metrics.baseline.roc_auc
        scored = await predictions.Score(
            prediction_pb2.ScoreRequest(key="will_buy"), metadata=admin
        )
        assert scored.scored == 1_500

        definition = {"prediction": {"key": "will_buy", "percentile": {"gte": 90}}}
        await segmentation.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="likely_buyers", definition=orjson.dumps(definition)
                )
            ),
            metadata=admin,
        )

        async def live() -> bool:
            audience = await segmentation.GetAudience(
                segmentation_pb2.GetAudienceRequest(key="likely_buyers"), metadata=admin
            )
            return audience.state == segmentation_pb2.AUDIENCE_STATE_LIVE

        await eventually(live, 30, "the predictive audience's backfill")
        members = await segmentation.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key="likely_buyers", page_size=1_000),
            metadata=admin,
        )

    engine = create_engine(database_url)
    try:
        async with engine.connect() as c:
            top = {
                str(pid)
                for (pid,) in await c.execute(
                    sa.select(prediction_scores.c.profile_id).where(
                        prediction_scores.c.key == "will_buy",
                        prediction_scores.c.percentile >= 90,
                    )
                )
            }
    finally:
        await engine.dispose()
    assert 100 <= len(top) <= 250
    assert {m.profile.profile_id for m in members.members} == top
