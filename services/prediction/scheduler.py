"""Scheduled training and scoring: each prediction is retrained daily and rescored
hourly (both configurable), and scored as soon as it has a newer model than its scores.

Every replica of the service runs the same rounds; the prediction's job lease (taken by
Predictions for each Train or Score) makes exactly one of them run each job, and a
replica finding the lease taken skips that prediction. A prediction whose training
fails (too little data, say) waits for its next turn rather than retrying every round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.prediction.model import TRAINING, PredictionRecord
from services.prediction.service import Predictions
from services.prediction.store import PredictionStore
from services.shared.clock import Clock
from services.shared.errors import FailedPrecondition

log = logging.getLogger(__name__)

US_PER_SECOND = 1_000_000
TRAIN_EVERY_SECONDS = 86_400
SCORE_EVERY_SECONDS = 3_600


@dataclass(frozen=True)
class Job:
    """One job a round ran: (workspace, prediction key, "trained" | "scored")."""

    workspace_id: str
    key: str
    kind: str


def _train_due(p: PredictionRecord, now_us: int, every_us: int) -> bool:
    if p.state == TRAINING:
        return False
    last = max(p.trained_at_us or 0, p.attempted_at_us or 0)
    return last == 0 or now_us - last >= every_us


def _score_due(p: PredictionRecord, now_us: int, every_us: int) -> bool:
    if p.model_version == 0:
        return False
    if p.scored_at_us is None or (p.trained_at_us or 0) > p.scored_at_us:
        return True
    return now_us - p.scored_at_us >= every_us


class Scheduler:
    """Runs the due training and scoring jobs of every prediction."""

    def __init__(
        self,
        predictions: Predictions,
        store: PredictionStore,
        clock: Clock,
        train_every_seconds: float = TRAIN_EVERY_SECONDS,
        score_every_seconds: float = SCORE_EVERY_SECONDS,
    ) -> None:
        self._predictions = predictions
        self._store = store
        self._clock = clock
        self._train_every_us = int(train_every_seconds * US_PER_SECOND)
        self._score_every_us = int(score_every_seconds * US_PER_SECOND)

    async def run_due(self) -> list[Job]:
        """One round: train, then score, whatever is due; returns the jobs run here."""
        done: list[Job] = []
        for ws, record in await self._store.every_prediction():
            now = self._clock.now_us()
            try:
                if _train_due(record, now, self._train_every_us):
                    await self._predictions.train(ws, record.key, None)
                    done.append(Job(ws, record.key, "trained"))
                    record = await self._predictions.get(ws, record.key)
                if _score_due(record, self._clock.now_us(), self._score_every_us):
                    await self._predictions.score(ws, record.key, None)
                    done.append(Job(ws, record.key, "scored"))
            except FailedPrecondition as error:
                # Busy elsewhere, or too little data: its next turn will tell.
                log.info("prediction %s of %s skipped: %s", record.key, ws, error.message)
            except Exception:
                log.exception("prediction %s of %s failed", record.key, ws)
        return done
