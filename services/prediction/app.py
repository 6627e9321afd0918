"""Composition root of the prediction service: wires concrete classes onto the server."""

from __future__ import annotations

import grpc
from audiences.v1 import prediction_pb2_grpc

from services.prediction.features_sql import FeatureQueries
from services.prediction.hot import PredictionHotState
from services.prediction.server import PredictionServiceServicer
from services.prediction.service import Predictions
from services.prediction.store import PredictionStore
from services.shared.server import Resources, ServiceSpec


def domain(resources: Resources) -> Predictions:
    """The Predictions use cases on `resources`."""
    return Predictions(
        PredictionStore(resources.engine),
        FeatureQueries(resources.engine),
        PredictionHotState(resources.redis),
        resources.clock,
    )


def register(server: grpc.aio.Server, resources: Resources) -> list[str]:
    """Add the prediction servicers; returns their full service names."""
    servicer = PredictionServiceServicer(domain(resources))
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    return ["audiences.v1.PredictionService"]


SPEC = ServiceSpec(name="prediction", register=register)
