"""Composition root of the ingest service: wires concrete classes onto the server."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from audiences.v1 import admin_pb2_grpc, ingest_pb2_grpc

from services.ingest.gateway import Gateway, build_app
from services.ingest.identity import IdentityRules
from services.ingest.ingestor import Ingestor
from services.ingest.publisher import (
    DEFAULT_MAXLEN,
    RedisPublisher,
    StreamCatchUp,
    rebuild_workspace,
)
from services.ingest.server import IngestServiceServicer
from services.ingest.store import SqlEventStore
from services.shared import streams, tls
from services.shared.admin_server import AdminServicer
from services.shared.server import Resources, ServiceSpec

# Objects the collector lets pile up before a young-generation collection (Python's
# default is 700). A group's objects (events, identifiers, rows, records) live for a
# few hundred ms, so with the default they outlived young collections and reached the
# oldest generation, whose full collections walked the whole heap (~150,000 objects,
# ~90 ms each): a fifth or more of the process's CPU in the in-process breakdown. At
# 50,000 most of a group's objects are freed by reference counting before any
# collection sees them.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Garbage collection for an ingest process; call once, after the imports.

    Freezes what exists now (modules, classes, functions: never garbage) so later
    collections do not walk it, and raises the young-generation threshold. Cyclic
    garbage is still collected, in fewer and larger passes.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


@dataclass
class IngestComponents:
    """The ingest service's objects for one process's Resources."""

    store: SqlEventStore
    publisher: RedisPublisher
    catch_up: StreamCatchUp
    ingestor: Ingestor


_COMPONENTS: dict[int, IngestComponents] = {}


def components(resources: Resources) -> IngestComponents:
    """The ingest objects of `resources` (made once, shared by servicer and workers)."""
    found = _COMPONENTS.get(id(resources))
    if found is None or found.store._engine is not resources.engine:
        maxlen = int(os.environ.get("INGEST_STREAM_MAXLEN", str(DEFAULT_MAXLEN)))
        shards = streams.shard_count()  # INGEST_SHARDS (docs/ingest.md, "Shards")
        store = SqlEventStore(resources.engine, shards)
        publisher = RedisPublisher(resources.redis, maxlen, shards)
        found = IngestComponents(
            store=store,
            publisher=publisher,
            catch_up=StreamCatchUp(store, resources.redis, publisher, maxlen=maxlen),
            ingestor=Ingestor(store, publisher, resources.clock),
        )
        hold = os.environ.get("INGEST_GROUPS_PER_HOLD")
        if hold:  # (an experiment knob: how long a writer keeps its locks)
            found.ingestor.groups_per_hold = int(hold)
        _COMPONENTS[id(resources)] = found
    return found


def validate_identity_rules(rules: dict[str, Any] | None) -> dict[str, Any]:
    """Normalised identity rules JSON; InvalidArgument names the bad setting."""
    return IdentityRules.parse(rules).to_json()


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the ingest servicers; returns their full service names."""
    ingestor = components(resources).ingestor
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServiceServicer(ingestor), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(resources.keys, validate_identity_rules), server
    )
    return ["audiences.v1.IngestService", "audiences.v1.AdminService"]


def http_port() -> int:
    """The HTTP gateway's port from INGEST_HTTP_PORT (default 8080; 0: any free port)."""
    return int(os.environ.get("INGEST_HTTP_PORT") or "8080")


def workers(resources: Resources) -> list[Coroutine[Any, Any, None]]:
    """The stream catch-up loop and the HTTP gateway (INGEST_HTTP_PORT, default 8080)."""
    parts = components(resources)
    settings = resources.settings
    app = build_app(parts.ingestor, resources.keys, settings.ingest_cors_origins)
    gateway = Gateway(app, settings.grpc_host, http_port(), tls.http_ssl_context(settings))
    return [parts.catch_up.run(), gateway.serve_forever()]


async def rebuild_hot_state(
    resources: Resources, workspace_id: str, progress: Callable[[str], None]
) -> str:
    """Recreate the workspace's hot identifiers, traits and merges from the database."""
    parts = components(resources)
    written = await rebuild_workspace(
        parts.store,
        resources.redis,
        parts.publisher,
        workspace_id,
        lambda done: progress(f"{done} profiles"),
    )
    return f"{written} profiles"


SPEC = ServiceSpec(
    name="ingest", register=register, workers=workers, rebuild_hot_state=rebuild_hot_state
)
