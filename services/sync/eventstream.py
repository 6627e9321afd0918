"""Event streaming: every replica looks for event syncs behind on an event stream shard
every ``events_poll_seconds`` and runs them (``SyncRunner``: claim, forward the new
entries of the sync's own consumer group on every shard, acknowledge after the
destination did). The row claim makes one replica at a time forward a sync's events,
so each shard's leave in stream order, which is seq order; a profile's events are all
on one shard, so they leave in order per profile (docs/sync.md, "Event syncs")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.shared.errors import ServiceError
from services.sync.runner import SyncHeld, SyncRunner, event_group
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
        """Run each event sync that has not started or whose consumer group is behind
        on some shard (entries after its position, or pending ones); how many ran."""
        syncs = await self._store.event_syncs()
        if not syncs:
            return 0
        behind = await self._groups_behind()
        ran = 0
        for sync in syncs:
            if sync.backfilled and not behind(event_group(sync.id)):
                continue
            try:
                await self._runner.run(sync.workspace_id, sync.id)
                ran += 1
            except SyncHeld:
                pass  # another replica forwards it now
            except ServiceError as error:
                log.info("event sync %s not run: %s", sync.id, error.message)
        return ran

    async def _groups_behind(self) -> Callable[[str], bool]:
        """Whether a consumer group has something to read on some shard: it is missing
        there, has pending entries, or was delivered less than the shard's newest entry.
        Two round trips per shard, however many syncs there are."""
        caught_up: list[set[str]] = []
        for stream in self._settings.events_streams:
            top = await self._redis.xrevrange(stream, count=1)
            newest = _id(_text(top[0][0])) if top else (0, 0)
            try:
                groups = await self._redis.xinfo_groups(stream)
            except ResponseError:
                groups = []  # no stream yet: nothing is caught up on it
            caught_up.append(
                {
                    _text(g["name"])
                    for g in groups
                    if not g["pending"] and _id(_text(g["last-delivered-id"])) >= newest
                }
            )
        return lambda group: any(group not in names for names in caught_up)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, sub = entry_id.partition("-")
    return int(ms), int(sub or 0)


def _text(raw: bytes | str | None) -> str:
    if isinstance(raw, bytes):
        return raw.decode()
    return raw or "0-0"
