"""Scheduled retraining: every recommendation object is retrained once its last
training (succeeded or failed) is older than the interval, or when it never trained.

Every replica of the profile service runs the same rounds. Marking a training running
is a conditional update (RecommendationStore.start_training), so it works as the
job's lease: exactly one replica's update matches, the others get FailedPrecondition
and skip the object; a training marked running for longer than STALE_TRAINING_US died
with its process and may be taken over. A failed training waits for its next turn
rather than retrying every round. Progress is recorded as for an asked-for training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.profile.recommendations.definition import RecommendationModel, TrainingState
from services.profile.recommendations.service import RecommendationModels
from services.profile.recommendations.store import RecommendationStore
from services.shared.clock import Clock
from services.shared.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

US_PER_SECOND = 1_000_000
RETRAIN_EVERY_SECONDS = 86_400


@dataclass(frozen=True)
class Job:
    """One training a round ran here: workspace, object key and how it ended."""

    workspace_id: str
    key: str
    state: TrainingState


def due(model: RecommendationModel, now_us: int, every_us: int) -> bool:
    """Whether the object's next scheduled training is due at `now_us`."""
    training = model.training
    if training.state is TrainingState.RUNNING:
        return False  # running here or elsewhere (a stale one is taken by start_training)
    last = training.finished_at_us or training.started_at_us
    return last is None or now_us - last >= every_us


class RetrainScheduler:
    """Runs the due trainings of every recommendation object, one at a time."""

    def __init__(
        self,
        models: RecommendationModels,
        store: RecommendationStore,
        clock: Clock,
        every_seconds: float = RETRAIN_EVERY_SECONDS,
    ) -> None:
        self._models = models
        self._store = store
        self._clock = clock
        self._every_us = int(every_seconds * US_PER_SECOND)

    async def run_due(self) -> list[Job]:
        """One round: train whatever is due; returns the trainings this replica ran."""
        done: list[Job] = []
        for workspace_id, model in await self._store.every_model():
            if not due(model, self._clock.now_us(), self._every_us):
                continue
            try:
                status = await self._models.train_now(workspace_id, model.key)
            except (FailedPrecondition, NotFound) as error:
                # Another replica holds it, or it was deleted meanwhile.
                log.info("recommendations %s of %s skipped: %s", model.key, workspace_id, error)
                continue
            done.append(Job(workspace_id, model.key, status.state))
        return done
