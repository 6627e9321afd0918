"""The recommendation objects' operations (the facade the servicer calls)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from services.profile.recommendations.definition import (
    RecommendationModel,
    TrainingStatus,
    parse_key,
    validate,
)
from services.profile.recommendations.hotwrite import RecommendationWriter
from services.profile.recommendations.store import RecommendationStore
from services.profile.recommendations.training import Trainer
from services.shared.clock import Clock


class RecommendationModels:
    """Create, read, delete and train recommendation objects of a workspace."""

    def __init__(
        self,
        store: RecommendationStore,
        writer: RecommendationWriter,
        trainer: Trainer,
        clock: Clock,
        as_job: bool = False,
    ) -> None:
        """With `as_job`, trainings are left to the training job (train records them)."""
        self._store = store
        self._as_job = as_job
        self._writer = writer
        self._trainer = trainer
        self._clock = clock
        # Running jobs, held so they are not collected before they finish.
        self._jobs: set[asyncio.Task[object]] = set()

    async def create(self, workspace_id: str, model: RecommendationModel) -> RecommendationModel:
        """Validate and store a new object (never trained yet)."""
        valid = validate(model)
        return await self._store.create(
            workspace_id, dataclasses.replace(valid, created_at_us=self._clock.now_us())
        )

    async def get(self, workspace_id: str, key: str) -> RecommendationModel:
        """One object with its training status; NotFound if absent."""
        return await self._store.get(workspace_id, parse_key(key))

    async def list(self, workspace_id: str) -> list[RecommendationModel]:
        """Every object of the workspace, by key."""
        return await self._store.all_models(workspace_id)

    async def delete(self, workspace_id: str, key: str) -> None:
        """Delete the object, then its items from every profile's hot state."""
        await self._store.delete(workspace_id, parse_key(key))
        await self._writer.remove_everywhere(workspace_id, key)

    async def train_now(
        self, workspace_id: str, key: str, started: Callable[[], object] | None = None
    ) -> TrainingStatus:
        """Run a training here and wait for it (the scheduler's and the job's way;
        `started` is called once this runner holds the lease); FailedPrecondition if it
        is training already, here or in another runner."""
        parse_key(key)
        await self._store.start_training(workspace_id, key, self._clock.now_us())
        if started is not None:
            started()
        return await self._trainer.run(workspace_id, key)

    async def train(self, workspace_id: str, key: str) -> RecommendationModel:
        """Start a training in this process and return the object, now running (with
        trainings in a job: record the request for the job's next run and return the
        object as it stands); FailedPrecondition if it is training already."""
        parse_key(key)
        if self._as_job:
            await self._store.request_training(workspace_id, key, self._clock.now_us())
            return await self._store.get(workspace_id, key)
        await self._store.start_training(workspace_id, key, self._clock.now_us())
        job = asyncio.create_task(self._trainer.run(workspace_id, key))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return await self._store.get(workspace_id, key)
