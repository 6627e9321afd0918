"""A predictive cohort through the real prediction and segmentation processes: a
prediction created, trained and scored over simulated behaviour, then an audience of
the top tenth (`percentile gte 90`) whose members are exactly the profiles scored there;
rescoring moves the cohort at once, with its entered and exited changes logged."""

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
from google.protobuf.timestamp_pb2 import Timestamp

from services.shared.db.engine import create_engine
from services.shared.db.membership_log import ENTERED, EXITED, membership_changes
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
        first = await members_of(segmentation, admin)
        assert 100 <= len(first) <= 250
        assert first == await top_decile(database_url)

        # Rescoring as of two weeks earlier moves the scores: the cohort follows at once
        # (the reconcile pass is an hour away), logging who entered and who left.
        earlier = Timestamp()
        earlier.FromMicroseconds(int(time.time() * 1e6) - 14 * 86_400_000_000)
        await predictions.Score(
            prediction_pb2.ScoreRequest(key="will_buy", as_of=earlier), metadata=admin
        )
        second = await top_decile(database_url)
        assert second != first

        async def followed() -> bool:
            return await members_of(segmentation, admin) == second

        await eventually(followed, 30, "the cohort to follow the rescoring")

    changes = await logged_changes(database_url)
    assert changes[ENTERED] == len(first) + len(second - first)
    assert changes[EXITED] == len(first - second)


async def members_of(
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub, admin: tuple[tuple[str, str], ...]
) -> set[str]:
    """The predictive audience's members (profile ids)."""
    members = await segmentation.ListMembers(
        segmentation_pb2.ListMembersRequest(audience_key="likely_buyers", page_size=1_000),
        metadata=admin,
    )
    return {m.profile.profile_id for m in members.members}


async def top_decile(database_url: str) -> set[str]:
    """Profiles scored at percentile 90 or above, from the scores table."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as c:
            return {
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


async def logged_changes(database_url: str) -> dict[str, int]:
    """How many entered and exited records the change log holds."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as c:
            rows = await c.execute(
                sa.select(membership_changes.c.kind, sa.func.count()).group_by(
                    membership_changes.c.kind
                )
            )
            return {ENTERED: 0, EXITED: 0} | {kind: n for kind, n in rows}
    finally:
        await engine.dispose()
