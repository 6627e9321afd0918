"""When a recommendation object is due for training, and where trainings run."""

from __future__ import annotations

import pytest

from services.profile.recommendations.definition import (
    ItemEvent,
    RecommendationModel,
    TrainingState,
    TrainingStatus,
)
from services.profile.recommendations.scheduler import due
from services.profile.recommendations.settings import TrainingSettings
from services.profile.recommendations.store import STALE_TRAINING_US

pytestmark = pytest.mark.unit

HOUR = 3600 * 1_000_000
DAY = 24 * HOUR
NOW = 100 * DAY


def model(**training: object) -> RecommendationModel:
    return RecommendationModel(
        "shop", (ItemEvent("Product Viewed", 1),), "product_id", training=TrainingStatus(**training)
    )


def test_due_when_never_trained_old_asked_for_or_stale() -> None:
    assert due(model(), NOW, DAY)
    done = TrainingState.SUCCEEDED
    assert not due(model(state=done, finished_at_us=NOW - HOUR), NOW, DAY)
    assert due(model(state=done, finished_at_us=NOW - DAY), NOW, DAY)
    # Asked for (RECOMMENDATIONS_TRAINING=job): due however recent the last one.
    assert due(model(state=done, finished_at_us=NOW - HOUR, requested_at_us=NOW), NOW, DAY)
    running = TrainingState.RUNNING
    assert not due(model(state=running, started_at_us=NOW - HOUR), NOW, DAY)
    # A runner that died mid-training leaves it running: past the lease, it is due.
    assert due(model(state=running, started_at_us=NOW - STALE_TRAINING_US - 1), NOW, DAY)


def test_training_settings_from_the_environment() -> None:
    default = TrainingSettings.from_env({})
    assert not default.as_job and default.scheduled_in_service
    assert not TrainingSettings.from_env(
        {"RECOMMENDATIONS_SCHEDULE_SECONDS": "0"}
    ).scheduled_in_service
    job = TrainingSettings.from_env(
        {"RECOMMENDATIONS_TRAINING": "job", "RECOMMENDATIONS_RETRAIN_EVERY_SECONDS": "60"}
    )
    assert job.as_job and not job.scheduled_in_service and job.retrain_every_seconds == 60
    with pytest.raises(ValueError, match="RECOMMENDATIONS_TRAINING"):
        TrainingSettings.from_env({"RECOMMENDATIONS_TRAINING": "cron"})
