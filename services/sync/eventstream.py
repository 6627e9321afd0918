"""Event streaming: every replica looks for event syncs behind the event stream every
``events_poll_seconds`` and runs them (``SyncRunner``: claim, forward the new entries
of the sync's own consumer group, acknowledge after the destination did). The row
claim makes one replica at a time forward a sync's events, so they leave in stream
order, which is seq order and so order per profile (docs/sync.md, "Event syncs")."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from services.shared.errors import ServiceError
from services.sync.runner import SyncHeld, SyncRunner
from services.sync.settings import SyncSettings
from services.sync.store import SyncStore

log = logging.getLogger(__name__)


class EventSyncs:
    """Runs the event syncs that have entries to read."""

    def __init__(
        self, redis: Redis, store: SyncStore, runner: SyncRunner, settings: SyncSettings
    ) -> None:
        self._redis = redis
        self._store = store
        self._runner = runner
        self._settings = settings

    async def run_forever(self) -> None:
        """Step until cancelled (a cancelled run leaves its entries pending)."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event sync step failed; retrying")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self._settings.events_poll_seconds)

    async def step(self) -> int:
        """Run each event sync whose cursor is behind the stream's newest entry (or
        that has not started); how many ran."""
        syncs = await self._store.event_syncs()
        if not syncs:
            return 0
        top = await self._redis.xrevrange(self._settings.events_stream, count=1)
        newest = int(_text(top[0][0]).split("-")[0]) if top else 0
        ran = 0
        for sync in syncs:
            if sync.backfilled and sync.cursor >= newest:
                continue
            try:
                await self._runner.run(sync.workspace_id, sync.id)
                ran += 1
            except SyncHeld:
                pass  # another replica forwards it now
            except ServiceError as error:
                log.info("event sync %s not run: %s", sync.id, error.message)
        return ran


def _text(raw: bytes | str | None) -> str:
    if isinstance(raw, bytes):
        return raw.decode()
    return raw or "0-0"
