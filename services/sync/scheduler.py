"""Runs hourly and daily syncs when they are due.

Every replica runs a scheduler; each due sync is taken with the row claim of
runner.SyncRunner (one conditional UPDATE), so exactly one replica runs it and the
others skip it. A run sets the sync's next due time one period after it started.
"""

from __future__ import annotations

import asyncio
import logging

from services.shared.clock import Clock
from services.shared.errors import ServiceError
from services.sync.model import Run
from services.sync.runner import SyncRunner
from services.sync.settings import SyncSettings
from services.sync.store import SyncStore

log = logging.getLogger(__name__)
DUE_PER_TICK = 100


class Scheduler:
    """Looks for due syncs every `scheduler_interval_seconds` and runs them."""

    def __init__(
        self, store: SyncStore, runner: SyncRunner, clock: Clock, settings: SyncSettings
    ) -> None:
        self._store = store
        self._runner = runner
        self._clock = clock
        self._settings = settings

    async def tick(self) -> list[Run]:
        """Run every sync due now that no other replica holds; the runs made."""
        runs = []
        for sync in await self._store.due_syncs(self._clock.now_us(), DUE_PER_TICK):
            try:
                runs.append(await self._runner.run(sync.workspace_id, sync.id, only_if_due=True))
            except ServiceError as error:
                # Claimed by another replica, paused or its audience deleted meanwhile.
                log.info("scheduled sync %s not run: %s", sync.id, error.message)
        return runs

    async def run_forever(self) -> None:
        """Tick until cancelled; a failing tick is logged and the next one tries again."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("sync scheduler tick failed")
            await asyncio.sleep(self._settings.scheduler_interval_seconds)
