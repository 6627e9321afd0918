"""Composition root of the segmentation service: wires concrete classes onto the server."""

from __future__ import annotations

import grpc
from audiences.v1 import segmentation_pb2_grpc

from services.segmentation.server import SegmentationServiceServicer
from services.shared.server import Resources, ServiceSpec


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the segmentation servicers; returns their full service names."""
    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(
        SegmentationServiceServicer(), server
    )
    return ["audiences.v1.SegmentationService"]


SPEC = ServiceSpec(name="segmentation", register=register)
