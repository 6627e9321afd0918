"""Composition root of the segmentation service: wires concrete classes onto the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
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
from services.shared.streams import (
    RESCORED_STREAM,
    StreamEntry,
    ack,
    claim_stale,
    ensure_group,
    read_group,
)

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


RESCORED_GROUP = "segmentation"
# An entry read by a consumer that died is taken over after this long unacknowledged.
RESCORED_STALE_MS = 60_000


async def rescored_once(segmentation: Segmentation, redis: Any, consumer: str) -> int:
    """Recompute the audiences on every prediction whose scores were replaced since the
    last pass (several announcements of one prediction make one recompute); an entry is
    acknowledged only once its recompute is committed. Returns the entries handled."""
    entries: list[StreamEntry] = await claim_stale(
        redis, RESCORED_STREAM, RESCORED_GROUP, consumer, RESCORED_STALE_MS
    )
    entries += await read_group(redis, RESCORED_STREAM, RESCORED_GROUP, consumer, count=100)
    pending: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        fields = {k.decode(): v.decode() for k, v in entry.fields.items()}
        pending.setdefault((fields["workspace"], fields["key"]), []).append(entry.id)
    for (ws, key), ids in pending.items():
        try:
            result = await segmentation.rescored(ws, key)
        except Exception:
            log.exception("recompute after rescoring %s/%s failed", ws, key)
            continue  # unacknowledged: taken over again after RESCORED_STALE_MS
        log.info("rescored %s/%s: +%d -%d", ws, key, result.entered, result.exited)
        await ack(redis, RESCORED_STREAM, RESCORED_GROUP, ids)
    return len(entries)


async def rescored_forever(resources: Resources) -> None:
    """Predictive cohorts follow rescoring: consume the prediction service's
    announcements (streams.RESCORED_STREAM) in a consumer group, one consumer per
    replica."""
    segmentation = domain(resources)
    consumer = uuid.uuid4().hex
    while True:
        try:
            await ensure_group(resources.redis, RESCORED_STREAM, RESCORED_GROUP)
            while True:
                await rescored_once(segmentation, resources.redis, consumer)
        except Exception:
            log.exception("reading %s failed; retrying", RESCORED_STREAM)
            await asyncio.sleep(1)  # back off before retrying, not synchronisation


def workers(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    """The reconcile loop (SEGMENTATION_RECONCILE_SECONDS, default hourly; 0 turns it off)
    and the consumer of rescoring announcements."""
    interval = float(os.environ.get("SEGMENTATION_RECONCILE_SECONDS", "3600"))
    loops = [rescored_forever(resources)]
    return loops + ([reconcile_forever(resources, interval)] if interval > 0 else [])


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
