"""Composition root of the profile service: wires concrete classes onto the server."""

from __future__ import annotations

import grpc
from audiences.v1 import profile_pb2_grpc

from services.profile.server import ProfileServiceServicer
from services.shared.server import Resources, ServiceSpec


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the profile servicers; returns their full service names."""
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileServiceServicer(), server)
    return ["audiences.v1.ProfileService"]


SPEC = ServiceSpec(name="profile", register=register)
