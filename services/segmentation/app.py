"""Composition root of the segmentation service: wires concrete classes onto the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from audiences.v1 import segmentation_pb2_grpc

from services.segmentation.hot import HotState
from services.segmentation.realtime.app import consume_forever
from services.segmentation.realtime.settings import DEFAULT_PORT, RealtimeSettings
from services.segmentation.server import SegmentationServiceServicer
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared.server import Resources, ServiceSpec

log = logging.getLogger(__name__)

_DOMAINS: dict[int, Segmentation] = {}


def domain(resources: Resources) -> Segmentation:
    """The Segmentation of `resources` (made once, shared by servicer and workers)."""
    found = _DOMAINS.get(id(resources))
    if found is None:
        found = Segmentation(
            SegmentationStore(resources.engine),
            HotState(resources.redis),
            resources.clock,
            watch_poll_seconds=float(os.environ.get("SEGMENTATION_WATCH_POLL_SECONDS", "0.2")),
        )
        _DOMAINS[id(resources)] = found
    return found


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the segmentation servicers; returns their full service names."""
    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(
        SegmentationServiceServicer(domain(resources)), server
    )
    return ["audiences.v1.SegmentationService"]


async def reconcile_forever(resources: Resources, interval_seconds: float) -> None:
    """The periodic batch pass: every workspace's computed traits and audiences
    recomputed from Postgres, correcting whatever drifted (late events, time passing)."""
    segmentation = domain(resources)
    while True:
        await asyncio.sleep(interval_seconds)  # the reconcile cadence, not synchronisation
        for ws in await segmentation.workspaces():
            try:
                result = await segmentation.reconcile(ws)
                log.info("reconciled %s: +%d -%d", ws, result.entered, result.exited)
                for failure in result.failures:
                    log.warning(
                        "reconcile of workspace %s: %s %s failed: %s",
                        ws,
                        failure.kind,
                        failure.key,
                        failure.reason,
                    )
            except Exception:
                log.exception("reconcile of workspace %s failed", ws)


def workers(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    """The reconcile loop (SEGMENTATION_RECONCILE_SECONDS, default hourly; 0 turns it off)."""
    interval = float(os.environ.get("SEGMENTATION_RECONCILE_SECONDS", "3600"))
    return [reconcile_forever(resources, interval)] if interval > 0 else []


async def rebuild_hot_state(
    resources: Resources, workspace_id: str, progress: Callable[[str], None]
) -> str:
    """Recreate the workspace's hot memberships and computed values from the database."""
    return str(await domain(resources).rebuild_hot_state(workspace_id))


SPEC = ServiceSpec(
    name="segmentation",
    register=register,
    workers=workers,
    rebuild_hot_state=rebuild_hot_state,
)


def _workers_with_realtime(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    return [*workers(resources), consume_forever(resources, RealtimeSettings.from_env())]


# `make run` (one process): the service with the realtime worker beside its reconcile.
EMBEDDED_SPEC = dataclasses.replace(SPEC, workers=_workers_with_realtime)
# The realtime worker as its own process (`python -m services.<REALTIME_MODULE>`), and
# the port of its health service.
REALTIME_MODULE = "segmentation.realtime"
REALTIME_PORT = DEFAULT_PORT
