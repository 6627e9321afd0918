"""The prediction use cases: predictions as objects, training, scoring, metrics.

Training (on demand, the Train RPC) stacks several point-in-time snapshots that end at
the cutoff (default: now - horizon, the latest cutoff whose labels are complete), a
horizon but at most a week apart (snapshot_cutoffs); the CPU-bound fit runs in a
worker thread so the server keeps answering.
Scoring computes today's features for the population, predicts, replaces the
prediction's scores in Postgres and the hot state, and announces it so that
segmentation recomputes the predictive cohorts at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from services.prediction import training
from services.prediction.features import FeatureSpec
from services.prediction.features_sql import FeatureQueries, label_vector
from services.prediction.hot import PredictionHotState
from services.prediction.metrics import Isotonic
from services.prediction.model import (
    FAILED,
    TRAINING,
    PredictionRecord,
    Progress,
    ScoredProfile,
    validate_spec,
)
from services.prediction.store import PredictionStore, StoredModel
from services.shared.clock import US_PER_DAY, Clock
from services.shared.errors import FailedPrecondition, NotFound, invalid

DEFAULT_PAGE = 100
MAX_PAGE = 1_000
# Snapshots stacked for training: one snapshot loses ~0.02 AUC on CDNOW against several.
# They are at most a week apart (labels of longer horizons overlap: more, if correlated,
# examples) and cover about half a year, 8 to 26 of them: on CDNOW, 26 weekly snapshots
# raised the 7-day PR AUC from 0.107 to 0.125 over 8 (docs/predictions.md, "CDNOW").
MAX_SNAPSHOT_STEP_DAYS = 7
SNAPSHOT_SPAN_DAYS = 182
MIN_SNAPSHOTS = 8
MAX_SNAPSHOTS = 26
# A job's lease outlives it by this much without progress (a crashed replica's job is
# taken over after it); every progress step extends it.
LEASE_SECONDS = 600
US_PER_SECOND = 1_000_000


@dataclass(frozen=True)
class TrainedMetrics:
    """A model version's held-out metrics."""

    version: int
    cutoff_us: int
    metrics: dict[str, Any]


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise invalid("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE, MAX_PAGE)


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode()


def _read_token(token: str, what: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise invalid("page_token", f"not a page token of {what}") from None


def snapshot_cutoffs(cutoff_us: int, horizon_days: int, snapshots: int | None = None) -> list[int]:
    """The training snapshots' cutoffs, latest first: a step of the horizon but at most
    a week, covering about SNAPSHOT_SPAN_DAYS (or exactly `snapshots` of them)."""
    step = min(horizon_days, MAX_SNAPSHOT_STEP_DAYS)
    count = snapshots or min(MAX_SNAPSHOTS, max(MIN_SNAPSHOTS, -(-SNAPSHOT_SPAN_DAYS // step)))
    return [cutoff_us - i * step * US_PER_DAY for i in range(count)]


class Predictions:
    """Predictions of every workspace, on one database and Redis."""

    def __init__(
        self,
        store: PredictionStore,
        queries: FeatureQueries,
        hot: PredictionHotState,
        clock: Clock,
        snapshots: int | None = None,
        owner: str | None = None,
        lease_seconds: int = LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._queries = queries
        self._hot = hot
        self._clock = clock
        self._snapshots = snapshots
        self.owner = owner or uuid.uuid4().hex
        self._lease_us = lease_seconds * US_PER_SECOND

    @asynccontextmanager
    async def _job(self, record: PredictionRecord) -> AsyncIterator[_Job]:
        """Hold the prediction's lease for one training or scoring job (FAILED_PRECONDITION
        when another replica's job holds it)."""
        now = self._clock.now_us()
        if not await self._store.acquire_lease(
            record.prediction_id, self.owner, now, now + self._lease_us
        ):
            raise FailedPrecondition(
                f"prediction {record.key!r} is busy: another training or scoring job is running"
            )
        try:
            yield _Job(self, record.prediction_id)
        finally:
            await self._store.release_lease(record.prediction_id, self.owner)

    async def _progress(self, prediction_id: int, progress: Progress) -> None:
        until = self._clock.now_us() + self._lease_us
        await self._store.progress(prediction_id, self.owner, until, progress)

    async def create(
        self, ws: str, key: str, name: str, goal: bytes, horizon_days: int, population: str
    ) -> PredictionRecord:
        """Create a prediction (INVALID_ARGUMENT naming every bad field)."""
        try:
            goal_json = orjson.loads(goal) if goal else None
        except orjson.JSONDecodeError:
            raise invalid("prediction.goal", "must be UTF-8 JSON") from None
        spec = validate_spec(key, name, goal_json, horizon_days, population)
        return await self._store.create(ws, spec, self._clock.now_us())

    async def get(self, ws: str, key: str) -> PredictionRecord:
        """The prediction with `key` (NOT_FOUND otherwise)."""
        if not key:
            raise invalid("key", "is required")
        found = await self._store.get(ws, key)
        if found is None:
            raise NotFound(f"no prediction {key!r}")
        return found

    async def list_predictions(
        self, ws: str, page_size: int, page_token: str
    ) -> tuple[list[PredictionRecord], str]:
        """A page of predictions by key and the next page's token ('' at the end)."""
        limit = _page_size(page_size)
        after = _read_token(page_token, "this list") if page_token else ""
        if not isinstance(after, str):
            raise invalid("page_token", "not a page token of this list")
        found = await self._store.list_predictions(ws, after, limit + 1)
        page = found[:limit]
        return page, _token(page[-1].key) if len(found) > limit else ""

    async def delete(self, ws: str, key: str) -> None:
        """Delete a prediction, its models and its scores (Postgres and hot state)."""
        record = await self.get(ws, key)
        scored = await self._store.delete(ws, record)
        await self._hot.remove(ws, key, scored)

    async def _snapshot_rows(
        self,
        ws: str,
        record: PredictionRecord,
        spec: FeatureSpec,
        cutoffs: list[int],
        job: _Job,
    ) -> training.Snapshots:
        horizon_us = record.horizon_days * US_PER_DAY
        parts = []
        for index, cutoff in enumerate(cutoffs):
            await job.step("features", index, len(cutoffs) + 1)
            ids, matrix = await self._queries.features(ws, spec, cutoff, record.population)
            performers = await self._queries.goal_performers(
                ws, record.goal, cutoff, cutoff + horizon_us, record.population
            )
            parts.append((ids, matrix, label_vector(ids, performers), index))
        return training.Snapshots(
            features=np.vstack([p[1] for p in parts]),
            labels=np.concatenate([p[2] for p in parts]),
            profile_ids=np.concatenate([p[0] for p in parts]),
            snapshot=np.concatenate([np.full(len(p[0]), p[3]) for p in parts]),
        )

    async def train(self, ws: str, key: str, cutoff_us: int | None) -> TrainedMetrics:
        """Train a new model version at `cutoff_us` (default: now - horizon)."""
        record = await self.get(ws, key)
        now = self._clock.now_us()
        horizon_us = record.horizon_days * US_PER_DAY
        latest = now - horizon_us
        cutoff = latest if cutoff_us is None else cutoff_us
        if cutoff > latest:
            raise invalid(
                "cutoff",
                f"must be at least the horizon ({record.horizon_days} days) before now,"
                " so that its labels are complete",
            )
        cutoffs = snapshot_cutoffs(cutoff, record.horizon_days, self._snapshots)
        async with self._job(record) as job:
            previous = {"state": record.state, "failure_reason": record.failure_reason or None}
            await self._store.set_state(
                record.prediction_id, now, state=TRAINING, attempted_at_us=now
            )
            try:
                spec = await self._queries.choose_spec(ws, cutoff, record.goal)
                rows = await self._snapshot_rows(ws, record, spec, cutoffs, job)
                await job.step("training", len(cutoffs), len(cutoffs) + 1)
                model = await asyncio.to_thread(training.train, rows, spec)
            except FailedPrecondition:
                # Too little data is the caller's to fix; the prediction stays as it was.
                await self._store.set_state(record.prediction_id, now, **previous)
                await job.step("too little data", 0, 0)
                raise
            except Exception as error:
                await self._store.set_state(
                    record.prediction_id,
                    now,
                    state=FAILED,
                    failure_reason=f"training failed: {type(error).__name__}",
                )
                await job.step("failed", 0, 0)
                raise
            stored_spec = {"features": spec.as_json(), "calibration": model.calibration.as_json()}
            metrics = model.metrics | {"cutoff_us": cutoff}
            version = await self._store.add_model(
                ws, record, cutoff, model.model_text, stored_spec, metrics, self._clock.now_us()
            )
            await job.step("trained", len(cutoffs) + 1, len(cutoffs) + 1)
        return TrainedMetrics(version, cutoff, metrics)

    async def metrics(self, ws: str, key: str) -> TrainedMetrics:
        """The current model's metrics (FAILED_PRECONDITION before the first training)."""
        record = await self.get(ws, key)
        model = await self._store.model(record)
        if model is None:
            raise FailedPrecondition(f"prediction {key!r} has no trained model yet; call Train")
        return TrainedMetrics(model.version, model.cutoff_us, model.metrics)

    async def score(self, ws: str, key: str, as_of_us: int | None) -> int:
        """Score the population at `as_of_us` (default now) with the current model;
        replaces the prediction's scores in Postgres and the hot state."""
        record = await self.get(ws, key)
        model = await self._store.model(record)
        if model is None:
            raise FailedPrecondition(f"prediction {key!r} has no trained model yet; call Train")
        as_of = self._clock.now_us() if as_of_us is None else as_of_us
        async with self._job(record) as job:
            await job.step("features", 0, 3)
            scored = await self._score(ws, record, model, as_of, job)
            await job.step("scored", 3, 3)
        return scored

    async def _score(
        self, ws: str, record: PredictionRecord, model: StoredModel, as_of: int, job: _Job
    ) -> int:
        key = record.key
        spec = FeatureSpec.from_json(model.spec["features"])
        calibration = Isotonic(
            tuple(model.spec["calibration"]["x"]), tuple(model.spec["calibration"]["y"])
        )
        ids, matrix = await self._queries.features(ws, spec, as_of, record.population)
        await job.step("predicting", 1, 3)
        scores = await asyncio.to_thread(
            training.score, model.model_text, calibration, spec, ids, matrix
        )
        await job.step("writing", 2, 3)
        reasons = [[r | {"text": training.reason_text(r)} for r in rs] for rs in scores.reasons]
        profile_ids = scores.profile_ids.tolist()
        probability = scores.probability.tolist()
        percentile = scores.percentile.tolist()
        now = self._clock.now_us()
        rows = [
            {
                "workspace_id": ws,
                "key": key,
                "profile_id": pid,
                "probability": p,
                "percentile": q,
                "scored_at_us": now,
                "reasons": why,
            }
            for pid, p, q, why in zip(profile_ids, probability, percentile, reasons, strict=True)
        ]
        unscored = await self._store.replace_scores(ws, record, rows, now)
        texts = [[r["text"] for r in rs] for rs in reasons]
        await self._hot.write(ws, key, profile_ids, probability, percentile, texts, now)
        await self._hot.remove(ws, key, unscored)
        # After the commit, so segmentation reads the new scores. Lost if this process
        # dies right here: the reconcile pass then catches the cohorts up.
        await self._hot.announce_rescored(ws, key)
        return len(rows)

    async def list_scores(
        self,
        ws: str,
        key: str,
        min_percentile: float,
        max_percentile: float,
        page_size: int,
        page_token: str,
    ) -> tuple[list[ScoredProfile], dict[int, list[tuple[str, str]]], str]:
        """Scores with a percentile in [min, max] (0 and 0 mean everything), highest
        first; with each profile's identifiers and the next page's token."""
        lower, upper = min_percentile, max_percentile or 100.0
        for field, value in (("min_percentile", lower), ("max_percentile", upper)):
            if not 0.0 <= value <= 100.0:
                raise invalid(field, f"must be between 0 and 100, got {value:g}")
        if lower > upper:
            raise invalid("min_percentile", f"must not exceed max_percentile ({upper:g})")
        limit = _page_size(page_size)
        await self.get(ws, key)
        after: tuple[float, int] | None = None
        if page_token:
            found = _read_token(page_token, "this score list")
            if not (isinstance(found, list) and len(found) == 2 and isinstance(found[1], int)):
                raise invalid("page_token", "not a page token of this score list")
            after = (float(found[0]), found[1])
        rows = await self._store.scores(ws, key, lower, upper, after, limit + 1)
        page = rows[:limit]
        token = _token([page[-1].percentile, page[-1].profile_id]) if len(rows) > limit else ""
        identifiers = await self._store.identifiers(ws, [r.profile_id for r in page])
        return page, identifiers, token


class _Job:
    """The running job of one prediction: reports its progress, extending the lease."""

    def __init__(self, predictions: Predictions, prediction_id: int) -> None:
        self._predictions = predictions
        self._prediction_id = prediction_id

    async def step(self, stage: str, done: int, total: int) -> None:
        """Record that the job reached `stage` (`done` of `total` steps)."""
        await self._predictions._progress(self._prediction_id, Progress(done, total, stage))
