"""Composition root of the prediction service: wires concrete classes onto the server."""

from __future__ import annotations

import grpc
from audiences.v1 import prediction_pb2_grpc

from services.prediction.server import PredictionServiceServicer
from services.shared.server import Resources, ServiceSpec


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the prediction servicers; returns their full service names."""
    # Its typed stub marks every RPC abstract; the generated class answers UNIMPLEMENTED
    # for the RPCs not written yet.
    servicer = PredictionServiceServicer()  # type: ignore[abstract]
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    return ["audiences.v1.PredictionService"]


SPEC = ServiceSpec(name="prediction", register=register)
