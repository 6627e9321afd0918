"""Composition root of the prediction service: wires concrete classes onto the server."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

import grpc
from audiences.v1 import prediction_pb2_grpc

from services.prediction.features_sql import FeatureQueries
from services.prediction.hot import PredictionHotState
from services.prediction.scheduler import SCORE_EVERY_SECONDS, TRAIN_EVERY_SECONDS, Scheduler
from services.prediction.server import PredictionServiceServicer
from services.prediction.service import Predictions
from services.prediction.store import PredictionStore
from services.shared.server import Resources, ServiceSpec

log = logging.getLogger(__name__)

# Keyed by id, holding the Resources too, so an id is never reused while it is cached.
_DOMAINS: dict[int, tuple[Resources, Predictions]] = {}


def domain(resources: Resources) -> Predictions:
    """The Predictions of `resources` (made once, shared by servicer and scheduler, so
    both act as the same lease owner)."""
    cached = _DOMAINS.get(id(resources))
    if cached is not None and cached[0] is resources:
        return cached[1]
    found = Predictions(
        PredictionStore(resources.engine),
        FeatureQueries(resources.engine),
        PredictionHotState(resources.redis),
        resources.clock,
    )
    _DOMAINS[id(resources)] = (resources, found)
    return found


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the prediction servicers; returns their full service names."""
    servicer = PredictionServiceServicer(domain(resources))
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    return ["audiences.v1.PredictionService"]


async def schedule_forever(resources: Resources, interval_seconds: float) -> None:
    """Every `interval_seconds`, run the due training and scoring jobs."""
    scheduler = Scheduler(
        domain(resources),
        PredictionStore(resources.engine),
        resources.clock,
        float(os.environ.get("PREDICTION_TRAIN_EVERY_SECONDS", TRAIN_EVERY_SECONDS)),
        float(os.environ.get("PREDICTION_SCORE_EVERY_SECONDS", SCORE_EVERY_SECONDS)),
    )
    while True:
        await asyncio.sleep(interval_seconds)  # the schedule's cadence, not synchronisation
        try:
            for job in await scheduler.run_due():
                log.info("prediction %s of %s %s", job.key, job.workspace_id, job.kind)
        except Exception:
            log.exception("prediction schedule round failed")


def workers(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    """The schedule loop (PREDICTION_SCHEDULE_SECONDS between rounds, default 60; 0 off)."""
    interval = float(os.environ.get("PREDICTION_SCHEDULE_SECONDS", "60"))
    return [schedule_forever(resources, interval)] if interval > 0 else []


SPEC = ServiceSpec(name="prediction", register=register, workers=workers)
