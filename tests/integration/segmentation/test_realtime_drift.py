"""The reconcile compares realtime membership and computed values with batch: what it
changes in a realtime definition is drift, repaired by its write and reported as a
metric (``audiences.realtime.drift``) and a log line with the counts. Real Postgres and
Redis; the worker never sees these events (as if they were lost)."""

from __future__ import annotations

import logging

import orjson
import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.service import AUDIENCE, COMPUTED_TRAIT, Drift, Segmentation
from services.segmentation.store import SegmentationStore
from services.shared.server import Resources

pytestmark = pytest.mark.integration


def _drift_points(reader: InMemoryMetricReader, ws: str) -> dict[str, int]:
    data = reader.get_metrics_data()
    out: dict[str, int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "audiences.realtime.drift":
                    continue
                for point in metric.data.data_points:
                    if point.attributes.get("workspace_id") == ws:
                        out[str(point.attributes["direction"])] = int(point.value)
    return out


async def test_the_reconcile_repairs_and_reports_realtime_drift(
    resources: Resources, caplog: pytest.LogCaptureFixture
) -> None:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    clock = resources.clock
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    ws, _, _ = await resources.keys.create_workspace("drift")
    for key, realtime in (("viewers", True), ("batch_viewers", False)):
        await segmentation.create_audience(
            ws,
            key=key,
            name="",
            description="",
            definition=orjson.dumps({"event": {"name": "Viewed"}}),
            account_level=False,
            skip_backfill=True,
            realtime=realtime,
        )
    await segmentation.create_computed_trait(
        ws,
        key="views",
        name="",
        definition=orjson.dumps({"type": "event_count", "event": "Viewed"}),
        skip_backfill=True,
        realtime=True,
    )
    await ingestor.ingest(
        ws,
        [
            RawEvent(type="track", message_id=f"m{i}", user_id=user, event="Viewed")
            for i, user in enumerate(["ann", "bo", "cy"])
        ],
    )

    with caplog.at_level(logging.WARNING, logger="services.segmentation.service"):
        result = await segmentation.reconcile(ws)
    # Only the realtime definitions count as drift (the batch audience is behind by
    # design until its recompute).
    assert sorted(result.drift, key=lambda d: d.kind) == [
        Drift(AUDIENCE, "viewers", 3, 0),
        Drift(COMPUTED_TRAIT, "views", 3, 0),
    ]
    audience = await store.get_audience(ws, "viewers")
    assert audience is not None and len(await store.members(audience.audience_id)) == 3
    lines = [r.getMessage() for r in caplog.records if "realtime drift" in r.getMessage()]
    assert lines == [
        f"realtime drift repaired in workspace {ws}: 2 definitions, +6 -0 "
        "(computed_trait views +3 -0, audience viewers +3 -0)"
    ]
    assert _drift_points(reader, ws) == {"entered": 6, "exited": 0}

    # In step now: a second reconcile finds no drift and reports none.
    caplog.clear()
    again = await segmentation.reconcile(ws)
    assert again.drift == ()
    assert not [r for r in caplog.records if "realtime drift" in r.getMessage()]
