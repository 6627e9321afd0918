import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from audiences.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prediction(_message.Message):
    __slots__ = ("key", "name", "goal", "horizon_days", "state", "trained_at", "scored_at", "progress")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    HORIZON_DAYS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    SCORED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    key: str
    name: str
    goal: bytes
    horizon_days: int
    state: str
    trained_at: _timestamp_pb2.Timestamp
    scored_at: _timestamp_pb2.Timestamp
    progress: _common_pb2.Progress
    def __init__(self, key: _Optional[str] = ..., name: _Optional[str] = ..., goal: _Optional[bytes] = ..., horizon_days: _Optional[int] = ..., state: _Optional[str] = ..., trained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scored_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ...) -> None: ...

class CreatePredictionRequest(_message.Message):
    __slots__ = ("prediction",)
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class GetPredictionRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ListPredictionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPredictionsResponse(_message.Message):
    __slots__ = ("predictions", "next_page_token")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    next_page_token: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePredictionRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeletePredictionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("key", "cutoff")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_FIELD_NUMBER: _ClassVar[int]
    key: str
    cutoff: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., cutoff: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: PredictionMetrics
    def __init__(self, metrics: _Optional[_Union[PredictionMetrics, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("key", "as_of")
    KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    key: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scored",)
    SCORED_FIELD_NUMBER: _ClassVar[int]
    scored: int
    def __init__(self, scored: _Optional[int] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class CalibrationBin(_message.Message):
    __slots__ = ("decile", "mean_predicted", "actual_rate", "count")
    DECILE_FIELD_NUMBER: _ClassVar[int]
    MEAN_PREDICTED_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_RATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    decile: int
    mean_predicted: float
    actual_rate: float
    count: int
    def __init__(self, decile: _Optional[int] = ..., mean_predicted: _Optional[float] = ..., actual_rate: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class FeatureImportance(_message.Message):
    __slots__ = ("feature", "gain")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    GAIN_FIELD_NUMBER: _ClassVar[int]
    feature: str
    gain: float
    def __init__(self, feature: _Optional[str] = ..., gain: _Optional[float] = ...) -> None: ...

class PredictionMetrics(_message.Message):
    __slots__ = ("key", "roc_auc", "pr_auc", "log_loss", "top_decile_lift", "calibration", "feature_importance", "train_rows", "test_rows", "positive_rate", "baseline_roc_auc")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    PR_AUC_FIELD_NUMBER: _ClassVar[int]
    LOG_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOP_DECILE_LIFT_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    key: str
    roc_auc: float
    pr_auc: float
    log_loss: float
    top_decile_lift: float
    calibration: _containers.RepeatedCompositeFieldContainer[CalibrationBin]
    feature_importance: _containers.RepeatedCompositeFieldContainer[FeatureImportance]
    train_rows: int
    test_rows: int
    positive_rate: float
    baseline_roc_auc: float
    def __init__(self, key: _Optional[str] = ..., roc_auc: _Optional[float] = ..., pr_auc: _Optional[float] = ..., log_loss: _Optional[float] = ..., top_decile_lift: _Optional[float] = ..., calibration: _Optional[_Iterable[_Union[CalibrationBin, _Mapping]]] = ..., feature_importance: _Optional[_Iterable[_Union[FeatureImportance, _Mapping]]] = ..., train_rows: _Optional[int] = ..., test_rows: _Optional[int] = ..., positive_rate: _Optional[float] = ..., baseline_roc_auc: _Optional[float] = ...) -> None: ...

class ListScoresRequest(_message.Message):
    __slots__ = ("key", "min_percentile", "max_percentile", "page_size", "page_token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MIN_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    MAX_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: str
    min_percentile: float
    max_percentile: float
    page_size: int
    page_token: str
    def __init__(self, key: _Optional[str] = ..., min_percentile: _Optional[float] = ..., max_percentile: _Optional[float] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ScoredProfile(_message.Message):
    __slots__ = ("profile", "probability", "percentile")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    profile: _common_pb2.ProfileRef
    probability: float
    percentile: float
    def __init__(self, profile: _Optional[_Union[_common_pb2.ProfileRef, _Mapping]] = ..., probability: _Optional[float] = ..., percentile: _Optional[float] = ...) -> None: ...

class ListScoresResponse(_message.Message):
    __slots__ = ("scores", "next_page_token")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[ScoredProfile]
    next_page_token: str
    def __init__(self, scores: _Optional[_Iterable[_Union[ScoredProfile, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
