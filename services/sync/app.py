"""Composition root of the sync service: wires concrete classes onto the server."""

from __future__ import annotations

import grpc
from audiences.v1 import sync_pb2_grpc

from services.shared.server import Resources, ServiceSpec
from services.sync.server import SyncServiceServicer


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the sync servicers; returns their full service names."""
    # Its typed stub marks every RPC abstract; the generated class answers UNIMPLEMENTED
    # for the RPCs not written yet.
    servicer = SyncServiceServicer()  # type: ignore[abstract]
    sync_pb2_grpc.add_SyncServiceServicer_to_server(servicer, server)
    return ["audiences.v1.SyncService"]


SPEC = ServiceSpec(name="sync", register=register)
