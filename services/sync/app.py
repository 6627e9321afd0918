"""Composition root of the sync service: wires concrete classes onto the server."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import grpc
from audiences.v1 import sync_pb2_grpc

from services.shared.server import Resources, ServiceSpec
from services.sync.eventstream import EventSyncs
from services.sync.readmodel import ChangeLog
from services.sync.realtime import RealtimeSyncs
from services.sync.runner import SyncRunner
from services.sync.scheduler import Scheduler
from services.sync.secrets import SecretBox
from services.sync.server import SyncServiceServicer
from services.sync.service import SyncService
from services.sync.settings import SyncSettings
from services.sync.store import SyncStore


def _runner(resources: Resources, settings: SyncSettings) -> tuple[SyncStore, SyncRunner]:
    store = SyncStore(resources.engine, SecretBox(settings.secret_key))
    changelog = ChangeLog(resources.engine)
    runner = SyncRunner(store, changelog, settings, resources.clock, redis=resources.redis)
    return store, runner


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the sync servicers; returns their full service names."""
    settings = SyncSettings.from_env()
    store, runner = _runner(resources, settings)
    service = SyncService(store, ChangeLog(resources.engine), runner, resources.clock)
    sync_pb2_grpc.add_SyncServiceServicer_to_server(SyncServiceServicer(service), server)
    return ["audiences.v1.SyncService"]


def workers(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    """The scheduler of hourly and daily syncs, the consumer of realtime ones, and the
    forwarder of event syncs."""
    settings = SyncSettings.from_env()
    store, runner = _runner(resources, settings)
    realtime = RealtimeSyncs(resources.redis, store, ChangeLog(resources.engine), runner, settings)
    return [
        Scheduler(store, runner, resources.clock, settings).run_forever(),
        realtime.run_forever(),
        EventSyncs(resources.redis, store, runner, settings).run_forever(),
    ]


SPEC = ServiceSpec(name="sync", register=register, workers=workers)
