"""Scheduled retraining: every recommendation object is retrained once its last
training (succeeded or failed) is older than the interval, when it never trained, or
when a training was asked for (RECOMMENDATIONS_TRAINING=job).

Every replica of the profile service runs the same rounds (with trainings in the
service), or the training job does (services.profile.recommendations.job). Marking a
training running is a conditional update (RecommendationStore.start_training), so it
works as the job's lease: exactly one runner's update matches, the others get
FailedPrecondition and skip the object; a training marked running for longer than
STALE_TRAINING_US died with its process: it is due again and may be taken over. A
failed training waits for its next turn rather than retrying every round. Progress is
recorded as for an asked-for training.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from services.profile.recommendations.definition import RecommendationModel, TrainingState
from services.profile.recommendations.service import RecommendationModels
from services.profile.recommendations.settings import DEFAULT_RETRAIN_EVERY_SECONDS
from services.profile.recommendations.store import STALE_TRAINING_US, RecommendationStore
from services.shared.clock import Clock
from services.shared.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

US_PER_SECOND = 1_000_000
RETRAIN_EVERY_SECONDS = DEFAULT_RETRAIN_EVERY_SECONDS


@dataclass(frozen=True)
class Job:
    """One training a round ran here: workspace, object key and how it ended."""

    workspace_id: str
    key: str
    state: TrainingState
    error: str | None = None


def due(model: RecommendationModel, now_us: int, every_us: int) -> bool:
    """Whether the object's next scheduled training is due at `now_us`: it never
    trained, its last training is `every_us` old, a training was asked for, or the
    one marked running went stale (its runner died; start_training takes it over)."""
    training = model.training
    if training.state is TrainingState.RUNNING:
        started = training.started_at_us or 0
        return now_us - started > STALE_TRAINING_US
    if training.requested_at_us is not None:
        return True
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

    async def run_due(
        self,
        say: Callable[[str], None] | None = None,
        only: tuple[str, str] | None = None,
    ) -> list[Job]:
        """One round: train whatever is due (or, with `only` = (workspace, key), that
        object whether due or not); returns the trainings this runner ran. `say`
        hears a line per object started, skipped and finished."""
        done: list[Job] = []
        if only is not None:
            chosen = [(only[0], await self._store.get(*only))]
        else:
            chosen = [
                (workspace_id, model)
                for workspace_id, model in await self._store.every_model()
                if due(model, self._clock.now_us(), self._every_us)
            ]
        for workspace_id, model in chosen:
            label = f"{workspace_id}/{model.key}"
            try:
                status = await self._models.train_now(
                    workspace_id,
                    model.key,
                    None if say is None else functools.partial(say, f"{label}: training"),
                )
            except (FailedPrecondition, NotFound) as error:
                # Another runner holds it, or it was deleted meanwhile.
                log.info("recommendations %s of %s skipped: %s", model.key, workspace_id, error)
                if say is not None:
                    say(f"{label}: skipped: {error}")
                if only is not None:
                    raise
                continue
            done.append(Job(workspace_id, model.key, status.state, status.error))
            if say is not None:
                say(
                    f"{label}: {status.state.value}"
                    + (
                        f": {status.profiles} profiles, {status.items} items, "
                        f"{status.interactions} interactions"
                        if status.error is None
                        else f": {status.error}"
                    )
                )
        return done
