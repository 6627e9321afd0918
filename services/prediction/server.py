"""PredictionService servicer: translates between protobuf and the prediction domain
(service.py), nothing else."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
from audiences.v1 import common_pb2, prediction_pb2, prediction_pb2_grpc

from services.prediction.model import PredictionRecord
from services.prediction.service import Predictions, TrainedMetrics
from services.shared.auth import current_workspace
from services.shared.timestamps import timestamp_from_us, us_from_timestamp


def _prediction(p: PredictionRecord) -> prediction_pb2.Prediction:
    message = prediction_pb2.Prediction(
        key=p.key,
        name=p.name,
        goal=orjson.dumps(p.goal.as_json()),
        horizon_days=p.horizon_days,
        state=p.state,
        progress=common_pb2.Progress(
            done=p.progress.done, total=p.progress.total, stage=p.progress.stage
        ),
        population=p.population or "",
        failure_reason=p.failure_reason,
        model_version=p.model_version,
    )
    if p.trained_at_us is not None:
        message.trained_at.CopyFrom(timestamp_from_us(p.trained_at_us))
    if p.scored_at_us is not None:
        message.scored_at.CopyFrom(timestamp_from_us(p.scored_at_us))
    return message


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    """The metrics the model and its baseline both report, as message fields."""
    return {
        "roc_auc": m["roc_auc"],
        "pr_auc": m["pr_auc"],
        "log_loss": m["log_loss"],
        "brier": m["brier"],
        "top_decile_lift": m["top_decile_lift"],
        "top_decile_precision": m["top_decile_precision"],
        "calibration": [prediction_pb2.CalibrationBin(**b) for b in m["calibration"]],
    }


def _metrics(key: str, trained: TrainedMetrics) -> prediction_pb2.PredictionMetrics:
    m, base = trained.metrics, trained.metrics["baseline"]
    return prediction_pb2.PredictionMetrics(
        key=key,
        **_headline(m),
        feature_importance=[
            prediction_pb2.FeatureImportance(feature=f["feature"], gain=f["gain"])
            for f in m["feature_importance"]
        ],
        train_rows=m["train_rows"],
        test_rows=m["test_rows"],
        positive_rate=m["positive_rate"],
        baseline_roc_auc=base["roc_auc"],
        baseline=prediction_pb2.BaselineMetrics(**_headline(base)),
        model_version=trained.version,
        cutoff=timestamp_from_us(trained.cutoff_us),
        snapshots=m["snapshots"],
    )


class PredictionServiceServicer(prediction_pb2_grpc.PredictionServiceServicer):
    """The prediction RPCs."""

    def __init__(self, predictions: Predictions) -> None:
        self._predictions = predictions

    async def CreatePrediction(
        self, request: prediction_pb2.CreatePredictionRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.Prediction:
        p = request.prediction
        record = await self._predictions.create(
            current_workspace(), p.key, p.name, p.goal, p.horizon_days, p.population
        )
        return _prediction(record)

    async def GetPrediction(
        self, request: prediction_pb2.GetPredictionRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.Prediction:
        return _prediction(await self._predictions.get(current_workspace(), request.key))

    async def ListPredictions(
        self, request: prediction_pb2.ListPredictionsRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.ListPredictionsResponse:
        page, token = await self._predictions.list_predictions(
            current_workspace(), request.page_size, request.page_token
        )
        return prediction_pb2.ListPredictionsResponse(
            predictions=[_prediction(p) for p in page], next_page_token=token
        )

    async def DeletePrediction(
        self, request: prediction_pb2.DeletePredictionRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.DeletePredictionResponse:
        await self._predictions.delete(current_workspace(), request.key)
        return prediction_pb2.DeletePredictionResponse()

    async def Train(
        self, request: prediction_pb2.TrainRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.TrainResponse:
        cutoff = us_from_timestamp(request.cutoff) if request.HasField("cutoff") else None
        trained = await self._predictions.train(current_workspace(), request.key, cutoff)
        return prediction_pb2.TrainResponse(metrics=_metrics(request.key, trained))

    async def GetMetrics(
        self, request: prediction_pb2.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.PredictionMetrics:
        trained = await self._predictions.metrics(current_workspace(), request.key)
        return _metrics(request.key, trained)

    async def Score(
        self, request: prediction_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.ScoreResponse:
        as_of = us_from_timestamp(request.as_of) if request.HasField("as_of") else None
        scored = await self._predictions.score(current_workspace(), request.key, as_of)
        return prediction_pb2.ScoreResponse(scored=scored)

    async def ListScores(
        self, request: prediction_pb2.ListScoresRequest, context: grpc.aio.ServicerContext
    ) -> prediction_pb2.ListScoresResponse:
        page, identifiers, token = await self._predictions.list_scores(
            current_workspace(),
            request.key,
            request.min_percentile,
            request.max_percentile,
            request.page_size,
            request.page_token,
        )
        return prediction_pb2.ListScoresResponse(
            scores=[
                prediction_pb2.ScoredProfile(
                    profile=common_pb2.ProfileRef(
                        profile_id=str(s.profile_id),
                        identifiers=[
                            common_pb2.Identifier(type=t, value=v)
                            for t, v in identifiers.get(s.profile_id, [])
                        ],
                    ),
                    probability=s.probability,
                    percentile=s.percentile,
                    reasons=list(s.reasons),
                )
                for s in page
            ],
            next_page_token=token,
        )
