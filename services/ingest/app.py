"""Composition root of the ingest service: wires concrete classes onto the server."""

from __future__ import annotations

import grpc
from audiences.v1 import admin_pb2_grpc, ingest_pb2_grpc

from services.ingest.server import IngestServiceServicer
from services.shared.admin_server import AdminServicer
from services.shared.server import Resources, ServiceSpec


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the ingest servicers; returns their full service names."""
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServiceServicer(), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(resources.keys), server)
    return ["audiences.v1.IngestService", "audiences.v1.AdminService"]


SPEC = ServiceSpec(name="ingest", register=register)
