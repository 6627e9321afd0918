"""On simulated behaviour with a planted signal (planted.py: recent product views drive
purchases), the service's model beats the classical purchase baselines out of time:
trained two weeks back, it scores every profile a week back, and is judged on who
bought in the week since, beside RFM and BG/NBD built from the same history."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from audiences.v1 import prediction_pb2

from services.prediction import bgnbd, metrics
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.db.tables import events, prediction_scores
from services.shared.server import Resources
from services.shared.timestamps import timestamp_from_us
from tests.integration.prediction.conftest import PredictionApi
from tests.integration.prediction.planted import plant


async def test_model_beats_rfm_and_bgnbd_out_of_time(
    prediction_api: PredictionApi, resources: Resources, clock: FixedClock
) -> None:
    api, ws, now = prediction_api, prediction_api.workspace_id, clock.now_us()
    planted = await plant(resources.engine, ws, now, profile_count=2_000, days=56)
    await api.create("buy", {"event": "purchase"})
    as_of = now - 7 * US_PER_DAY
    await api.stub.Train(
        prediction_pb2.TrainRequest(key="buy", cutoff=timestamp_from_us(as_of - 7 * US_PER_DAY)),
        metadata=api.metadata,
    )
    await api.stub.Score(
        prediction_pb2.ScoreRequest(key="buy", as_of=timestamp_from_us(as_of)),
        metadata=api.metadata,
    )

    ids = np.array(sorted(planted.profile_ids))
    async with resources.engine.connect() as c:
        scored = dict(
            (
                await c.execute(
                    sa.select(prediction_scores.c.profile_id, prediction_scores.c.probability)
                )
            ).all()
        )
        bought = (
            await c.execute(
                sa.select(events.c.profile_id, events.c.timestamp_us).where(
                    events.c.workspace_id == ws, events.c.name == "purchase"
                )
            )
        ).all()
    model = np.array([scored[int(p)] for p in ids])
    pid = np.array([r[0] for r in bought])
    day = np.array([r[1] for r in bought]) // US_PER_DAY
    before = day < as_of // US_PER_DAY
    labels = np.isin(ids, pid[~before]).astype(np.float64)

    # Purchase history at the cutoff: distinct purchase days, first and last.
    at = np.searchsorted(ids, pid[before])
    days = np.zeros(len(ids))
    first = np.full(len(ids), float(planted.start_us // US_PER_DAY))
    last = first.copy()
    for index in np.unique(at):
        mine = np.unique(day[before][at == index])
        days[index], first[index], last[index] = len(mine), mine[0], mine[-1]
    cutoff_day = as_of / US_PER_DAY
    recency = cutoff_day - last
    rfm = np.log1p(days) - np.log1p(recency)
    fitted = bgnbd.fit(np.maximum(days - 1, 0), last - first, cutoff_day - first)
    bg = fitted.p_purchase_within(7.0, np.maximum(days - 1, 0), last - first, cutoff_day - first)

    assert 0.02 < labels.mean() < 0.5
    for scorer in (rfm, bg):
        assert metrics.roc_auc(labels, model) > metrics.roc_auc(labels, scorer) + 0.02
        assert metrics.pr_auc(labels, model) > metrics.pr_auc(labels, scorer)
