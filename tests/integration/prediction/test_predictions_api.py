"""Predictions as objects through the real service: create, get, list, delete, and
bad input refused with field violations while nothing changes."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import prediction_pb2

from services.shared.errors import field_violations
from tests.integration.prediction.conftest import PredictionApi

GOAL = {"event": "purchase", "where": [{"property": "plan", "op": "eq", "value": "pro"}]}


async def test_create_get_list_delete(prediction_api: PredictionApi) -> None:
    api = prediction_api
    created = await api.create("buy_pro", GOAL)
    assert created.key == "buy_pro"
    assert created.horizon_days == 7  # the default
    assert created.state == "untrained"
    assert created.model_version == 0
    assert orjson.loads(created.goal) == GOAL
    await api.create("buy_any", {"event": "purchase"}, horizon_days=30, population="vips")

    got = await api.get("buy_any")
    assert (got.horizon_days, got.population) == (30, "vips")
    assert orjson.loads(got.goal) == {"event": "purchase", "where": []}

    first = await api.stub.ListPredictions(
        prediction_pb2.ListPredictionsRequest(page_size=1), metadata=api.metadata
    )
    second = await api.stub.ListPredictions(
        prediction_pb2.ListPredictionsRequest(page_size=1, page_token=first.next_page_token),
        metadata=api.metadata,
    )
    assert [p.key for p in first.predictions] == ["buy_any"]
    assert [p.key for p in second.predictions] == ["buy_pro"]
    assert second.next_page_token == ""

    await api.stub.DeletePrediction(
        prediction_pb2.DeletePredictionRequest(key="buy_any"), metadata=api.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await api.get("buy_any")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_duplicate_key_is_already_exists(prediction_api: PredictionApi) -> None:
    await prediction_api.create("buy", GOAL)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await prediction_api.create("buy", {"event": "other"})
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("key", "goal", "horizon", "field"),
    [
        ("Bad Key", GOAL, 0, "prediction.key"),
        ("ok", GOAL, 400, "prediction.horizon_days"),
        ("ok", GOAL, -1, "prediction.horizon_days"),
        ("ok", {"where": []}, 0, "prediction.goal.event"),
        ("ok", [1], 0, "prediction.goal"),
        ("ok", {"event": "e", "extra": 1}, 0, "prediction.goal.extra"),
        ("ok", {"event": "e", "where": {}}, 0, "prediction.goal.where"),
        (
            "ok",
            {"event": "e", "where": [{"property": "p", "op": "like", "value": 1}]},
            0,
            "prediction.goal.where[0].op",
        ),
        (
            "ok",
            {"event": "e", "where": [{"property": "p", "op": "gt", "value": "x"}]},
            0,
            "prediction.goal.where[0].value",
        ),
        (
            "ok",
            {"event": "e", "where": [{"property": "p", "op": "gt", "value": 2**63}]},
            0,
            "prediction.goal.where[0].value",
        ),
        (
            "ok",
            {"event": "e", "where": [{"property": "p", "op": "in", "value": [1, -(2**63)]}]},
            0,
            "prediction.goal.where[0].value[1]",
        ),
        (
            "ok",
            {"event": "e", "where": [{"property": "p", "op": "eq", "ref": {"trait": "t"}}]},
            0,
            "prediction.goal.where[0].ref",
        ),
        (
            "ok",
            {"event": "e", "where": [{"property": "", "op": "exists"}]},
            0,
            "prediction.goal.where[0].property",
        ),
    ],
)
async def test_bad_input_names_the_field_and_creates_nothing(
    prediction_api: PredictionApi, key: str, goal: Any, horizon: int, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await prediction_api.create(key, goal, horizon_days=horizon)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(error.value)]
    listed = await prediction_api.stub.ListPredictions(
        prediction_pb2.ListPredictionsRequest(), metadata=prediction_api.metadata
    )
    assert list(listed.predictions) == []


async def test_goal_that_is_not_json(prediction_api: PredictionApi) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await prediction_api.stub.CreatePrediction(
            prediction_pb2.CreatePredictionRequest(
                prediction=prediction_pb2.Prediction(key="k", goal=b"{not json")
            ),
            metadata=prediction_api.metadata,
        )
    assert [v.field for v in field_violations(error.value)] == ["prediction.goal"]


async def test_metrics_and_score_before_training_are_failed_precondition(
    prediction_api: PredictionApi,
) -> None:
    api = prediction_api
    await api.create("buy", GOAL)
    for call in (
        api.stub.GetMetrics(prediction_pb2.GetMetricsRequest(key="buy"), metadata=api.metadata),
        api.stub.Score(prediction_pb2.ScoreRequest(key="buy"), metadata=api.metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no trained model" in (error.value.details() or "")
