"""Composition root and process of the realtime worker: the worker beside a gRPC
server that answers only grpc.health.v1 (and reflection), with the services'
bootstrap (services/shared/server.py): SIGTERM finishes the batch in hand, acknowledges
it and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc

from services.segmentation.hot import HotState
from services.segmentation.realtime.settings import DEFAULT_PORT, RealtimeSettings
from services.segmentation.realtime.store import RealtimeStore
from services.segmentation.realtime.worker import RealtimeWorker
from services.segmentation.store import SegmentationStore
from services.shared.config import Settings
from services.shared.server import Resources, ServiceSpec, run, start_service

log = logging.getLogger(__name__)


def _no_api(server: grpc.aio.Server, resources: Resources) -> list[str]:
    return []  # health and reflection only: the worker has no API


SPEC = ServiceSpec(name="segmentation-realtime", register=_no_api)


def worker(resources: Resources, settings: RealtimeSettings) -> RealtimeWorker:
    """A worker on the process's database, Redis and clock."""
    return RealtimeWorker(
        resources.redis,
        RealtimeStore(resources.engine, SegmentationStore(resources.engine)),
        HotState(resources.redis),
        resources.clock,
        settings,
    )


async def consume_forever(resources: Resources, settings: RealtimeSettings) -> None:
    """The worker as a background coroutine of another process (the dev runner runs it
    beside the segmentation service) until cancelled. Cancellation is turned into the
    worker's own stop: the batch in hand is finished and acknowledged first (as on
    SIGTERM of the worker process), rather than cut off inside a database call."""
    stop = asyncio.Event()
    consuming = asyncio.create_task(worker(resources, settings).run(stop))
    try:
        await asyncio.shield(consuming)
    except asyncio.CancelledError:
        stop.set()
        await consuming
        raise


async def serve(settings: Settings, realtime: RealtimeSettings) -> None:
    """Run the worker until SIGTERM or SIGINT; a worker failure ends the process too."""
    resources = await Resources.open(settings, SPEC.name)
    port = settings.grpc_port if settings.grpc_port is not None else DEFAULT_PORT
    service = await start_service(SPEC, resources, port, settings.grpc_host)
    log.info(
        "realtime worker %s on %s, health on port %d",
        realtime.consumer,
        ",".join(realtime.streams),
        service.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    consuming = asyncio.create_task(worker(resources, realtime).run(stop))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: finishing the batch in hand")
        stop.set()
        await consuming  # re-raises a worker failure: the process exits non-zero
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await service.stop(settings.shutdown_grace_seconds)
        await resources.close()


def main() -> None:
    """Entry point of `python -m services.segmentation.realtime`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(serve(Settings.from_env(), RealtimeSettings.from_env()))
