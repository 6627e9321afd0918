"""Fixtures of the prediction integration tests: the prediction service on a loopback
port, and a stub with the workspace's admin key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import prediction_pb2, prediction_pb2_grpc

from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process


@dataclass
class PredictionApi:
    """The PredictionService of a running server, called with the admin key."""

    stub: prediction_pb2_grpc.PredictionServiceStub
    metadata: tuple[tuple[str, str], ...]
    workspace_id: str

    async def create(
        self, key: str, goal: Any, horizon_days: int = 0, population: str = ""
    ) -> prediction_pb2.Prediction:
        return await self.stub.CreatePrediction(
            prediction_pb2.CreatePredictionRequest(
                prediction=prediction_pb2.Prediction(
                    key=key,
                    goal=orjson.dumps(goal),
                    horizon_days=horizon_days,
                    population=population,
                )
            ),
            metadata=self.metadata,
        )

    async def get(self, key: str) -> prediction_pb2.Prediction:
        return await self.stub.GetPrediction(
            prediction_pb2.GetPredictionRequest(key=key), metadata=self.metadata
        )


@pytest.fixture
async def prediction_api(
    resources: Resources, workspace: WorkspaceKeys
) -> AsyncIterator[PredictionApi]:
    async with in_process(resources, ["prediction"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["prediction"]) as channel:
            yield PredictionApi(
                prediction_pb2_grpc.PredictionServiceStub(channel),
                bearer(workspace.admin),
                workspace.workspace_id,
            )
