"""Composition root of the profile service: wires concrete classes onto the server.

Besides the gRPC servicer, the process runs the read-only HTTP view as a background
worker on PROFILE_HTTP_PORT (default 8081; 0 picks a free port, which is logged).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from audiences.v1 import profile_pb2_grpc

from services.profile import httpview
from services.profile.exposures import ExposureLog
from services.profile.hotread import HotProfiles
from services.profile.recommendations.consumed import ConsumedItems
from services.profile.recommendations.hotwrite import RecommendationWriter
from services.profile.recommendations.scheduler import RetrainScheduler
from services.profile.recommendations.service import RecommendationModels
from services.profile.recommendations.settings import TrainingSettings
from services.profile.recommendations.store import RecommendationStore
from services.profile.recommendations.training import Trainer
from services.profile.server import ProfileServiceServicer
from services.profile.service import ProfileService
from services.profile.store import ProfileStore
from services.shared import recommendation_lists, tls
from services.shared.server import Resources, ServiceSpec

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8081
# Profiles' lists read from the database per page of a rebuild (one script call each).
REBUILD_PAGE = 500


def http_port() -> int:
    """The HTTP view's port from PROFILE_HTTP_PORT (0: any free port)."""
    value = os.environ.get("PROFILE_HTTP_PORT")
    return int(value) if value else DEFAULT_HTTP_PORT


def build(resources: Resources) -> ProfileService:
    """The profile domain facade on this process's Redis, database and clock.

    Hot reads use the pipelined connection (traced like redis-py's commands while
    tracing records).
    """
    return ProfileService(
        HotProfiles(resources.redis, resources.pipelined),
        ProfileStore(resources.engine),
        resources.clock,
        exposure_log(resources),
    )


# One exposure buffer per process (resources), shared by the servicer, the HTTP view
# and the worker that writes it.
# Keyed by id, checked by a weak reference: an id is reused once its object is gone.
_EXPOSURE_LOGS: dict[int, tuple[weakref.ref[Resources], ExposureLog]] = {}


def exposure_log(resources: Resources) -> ExposureLog:
    """The process's exposure buffer (services.profile.exposures)."""
    found = _EXPOSURE_LOGS.get(id(resources))
    if found is None or found[0]() is not resources:
        found = _EXPOSURE_LOGS[id(resources)] = (
            weakref.ref(resources),
            ExposureLog(resources.engine),
        )
    return found[1]


def build_models(resources: Resources) -> RecommendationModels:
    """Recommendation objects and their training jobs on this process's resources
    (TrainRecommendationModel only records the request when RECOMMENDATIONS_TRAINING
    is job)."""
    store = RecommendationStore(resources.engine)
    writer = RecommendationWriter(resources.redis)
    return RecommendationModels(
        store,
        writer,
        Trainer(store, writer, resources.clock),
        resources.clock,
        as_job=TrainingSettings.from_env().as_job,
    )


async def retrain_forever(resources: Resources, interval_seconds: float) -> None:
    """Every `interval_seconds`, retrain the recommendation objects that are due
    (RECOMMENDATIONS_RETRAIN_EVERY_SECONDS after their last training, default a day)."""
    scheduler = RetrainScheduler(
        build_models(resources),
        RecommendationStore(resources.engine),
        resources.clock,
        TrainingSettings.from_env().retrain_every_seconds,
    )
    while True:
        await asyncio.sleep(interval_seconds)  # the schedule's cadence, not synchronisation
        try:
            for job in await scheduler.run_due():
                log.info("recommendations %s of %s: %s", job.key, job.workspace_id, job.state)
        except Exception:
            log.exception("recommendation retrain round failed")


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the profile servicers; returns their full service names."""
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(
        ProfileServiceServicer(build(resources), build_models(resources)), server
    )
    return ["audiences.v1.ProfileService"]


def workers(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    """The HTTP JSON view beside the gRPC server, the exposure log's writer, the
    consumer that keeps the profiles' consumed items (recs_consumed) and the retrain
    schedule (RECOMMENDATIONS_SCHEDULE_SECONDS between rounds, default 300; 0
    off; none with RECOMMENDATIONS_TRAINING=job, where the training job trains)."""
    found: list[Coroutine[Any, Any, None]] = [
        exposure_log(resources).run(),
        ConsumedItems(resources.redis, resources.engine).run(),
        httpview.serve(
            build(resources),
            resources.keys,
            resources.settings.grpc_host,
            http_port(),
            tls.http_ssl_context(resources.settings),
        ),
    ]
    training = TrainingSettings.from_env()
    if training.scheduled_in_service:
        found.append(retrain_forever(resources, training.schedule_seconds))
    return found


async def rebuild_hot_state(
    resources: Resources, workspace_id: str, progress: Callable[[str], None]
) -> str:
    """Recreate the workspace's recommendations in the hot state from the database:
    each profile's own lists of every object (recommendation_lists, what the last
    training wrote; lists the hot state held of objects or profiles the database no
    longer has are removed first) and the objects' popular lists (recs_popular)."""
    store = RecommendationStore(resources.engine)
    writer = RecommendationWriter(resources.redis)
    await writer.clear_own_lists(workspace_id)
    written = 0
    for key in await store.model_keys(workspace_id):
        async for page in recommendation_lists.encoded_lists_of(
            resources.engine, workspace_id, key, REBUILD_PAGE
        ):
            await writer.replace_encoded(workspace_id, key, page)
            written += len(page)
            progress(f"{written} profile lists")
    lists = await store.popular_lists(workspace_id)
    for key, items, reserve in lists:
        await writer.set_popular(workspace_id, key, items, reserve)
        progress(f"popular list of {key}")
    return f"{written} profile recommendation lists, {len(lists)} popular recommendation lists"


# GetProfile's servicer returns the Profile message as the hot state wrote it.
PREENCODED = frozenset({"/audiences.v1.ProfileService/GetProfile"})

SPEC = ServiceSpec(
    name="profile",
    register=register,
    workers=workers,
    preencoded=PREENCODED,
    rebuild_hot_state=rebuild_hot_state,
)
