"""Realtime syncs: deliver an audience's changes within a second of the realtime worker
committing them, by consuming ``stream:changes`` with a consumer group.

The stream is the trigger, the change log is the truth. An entry names a change's
workspace, audience key and seq; reading it makes every realtime sync of that audience
run (``SyncRunner.run``: claim, deliver the log's changes after the cursor in seq
order, advance the cursor only after the destination acknowledged). An entry is
acknowledged (XACK) only once every such sync's cursor has passed its seq, so a replica
that dies mid-delivery leaves its entries pending and another replica takes them over
(XAUTOCLAIM) and delivers from the cursor. Entries a run could not finish (the claim
held by another replica, a destination down) stay pending and are read again from this
consumer's own pending list, with backoff.

Because delivery reads the log after the cursor, a run delivers every change up to the
newest, including ones whose stream entry has not been read yet (or was lost between
the worker's commit and its XADD); a sweep every ``realtime_sweep_seconds`` checks
every realtime sync against the log, which also runs a new sync's first backfill and a
resumed sync's held-back changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from services.shared import streams
from services.shared.errors import ServiceError
from services.shared.streams import StreamEntry
from services.sync.model import FAILED, Sync
from services.sync.readmodel import ChangeLog
from services.sync.runner import SyncHeld, SyncRunner
from services.sync.settings import SyncSettings
from services.sync.store import SyncStore

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class ChangeEntry:
    """What sync reads of a ``stream:changes`` entry (the realtime worker's format)."""

    id: str
    workspace_id: str
    audience_key: str
    seq: int

    @classmethod
    def parse(cls, entry: StreamEntry) -> ChangeEntry | None:
        """The entry's fields, or None when it lacks them (acknowledged and skipped)."""
        f = entry.fields
        try:
            return cls(
                entry.id,
                f[b"workspace_id"].decode(),
                f[b"audience_key"].decode(),
                int(f[b"seq"]),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


class RealtimeSyncs:
    """One consumer of the changes stream in the sync replicas' group."""

    def __init__(
        self,
        redis: Redis,
        store: SyncStore,
        changelog: ChangeLog,
        runner: SyncRunner,
        settings: SyncSettings,
    ) -> None:
        self._redis = redis
        self._store = store
        self._changelog = changelog
        self._runner = runner
        self._settings = settings
        self._consumer = settings.replica
        self._retry_wait = 0.0
        self._retry_at: float | None = None

    async def run_forever(self) -> None:
        """Consume until cancelled (a cancelled delivery leaves its entries pending)."""
        s = self._settings
        # From the stream's start: entries already there are checked against cursors
        # (cheap) rather than trusted to a sweep.
        await streams.ensure_group(self._redis, s.changes_stream, s.realtime_group, "0")
        claimed_at = swept_at = float("-inf")
        while True:
            try:
                now = time.monotonic()
                if now - claimed_at >= s.realtime_claim_every_seconds:
                    await self.claim_stale()
                    claimed_at = now
                if now - swept_at >= s.realtime_sweep_seconds:
                    await self.sweep()
                    swept_at = now
                if self._retry_at is not None and now >= self._retry_at:
                    await self._handle(await self._own_pending())
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if streams.group_gone(error):
                    # The stream went with its group (a Redis restart without
                    # persistence, a flush): read what is appended from now on, and
                    # sweep the change log for what the lost entries announced.
                    log.warning("group %s is gone (%s); creating it again", s.realtime_group, error)
                    await streams.ensure_group(self._redis, s.changes_stream, s.realtime_group, "0")
                    swept_at = float("-inf")
                    continue
                log.exception("realtime sync loop failed; retrying")
                await asyncio.sleep(1.0)

    async def step(self) -> int:
        """Read new entries (waiting up to realtime_block_ms, less when a retry is due)
        and deliver them; how many were read."""
        s = self._settings
        block = s.realtime_block_ms
        if self._retry_at is not None:
            block = max(1, min(block, int((self._retry_at - time.monotonic()) * 1000)))
        read = await streams.read_group(
            self._redis, s.changes_stream, s.realtime_group, self._consumer, s.realtime_batch, block
        )
        if read:
            await self._handle(read)
        return len(read)

    async def claim_stale(self) -> int:
        """Take over and deliver entries another replica left pending for longer than
        realtime_claim_idle_ms; how many."""
        s = self._settings
        cursor, total = "0-0", 0
        while True:
            cursor, entries = await streams.claim_stale_page(
                self._redis,
                s.changes_stream,
                s.realtime_group,
                self._consumer,
                s.realtime_claim_idle_ms,
                cursor,
                s.realtime_batch,
            )
            if entries:
                log.info("took over %d pending change entries", len(entries))
                await self._handle(entries)
                total += len(entries)
            if cursor == "0-0":
                return total

    async def sweep(self) -> int:
        """Run every realtime sync that is behind the change log (or not backfilled);
        how many ran."""
        ran = 0
        for sync in await self._store.realtime_syncs():
            if sync.paused:
                continue
            audience_id = await self._changelog.audience_id(sync.workspace_id, sync.source_key)
            if audience_id is None:
                continue
            if sync.backfilled and (
                await self._changelog.last_change(sync.workspace_id, audience_id) <= sync.cursor
            ):
                continue
            await self._drain(sync)
            ran += 1
        return ran

    async def _own_pending(self) -> list[StreamEntry]:
        """This consumer's entries read but not acknowledged (XREADGROUP from 0)."""
        s = self._settings
        reply = cast(
            "list[Any]",
            await self._redis.xreadgroup(
                s.realtime_group, self._consumer, {s.changes_stream: "0"}, count=s.realtime_batch
            ),
        )
        if not reply:
            return []
        return [
            StreamEntry(i.decode() if isinstance(i, bytes) else i, f)
            for i, f in reply[0][1]
            if f is not None
        ]

    async def _handle(self, read: Sequence[StreamEntry]) -> None:
        """Run the realtime syncs the entries concern, then acknowledge the entries
        every such sync has delivered; schedule a retry of the others."""
        s = self._settings
        done: list[str] = []
        wanted: dict[str, dict[str, list[ChangeEntry]]] = defaultdict(lambda: defaultdict(list))
        for entry in read:
            parsed = ChangeEntry.parse(entry)
            if parsed is None:
                log.warning("change entry %s without workspace, audience or seq", entry.id)
                done.append(entry.id)
            else:
                wanted[parsed.workspace_id][parsed.audience_key].append(parsed)
        left = 0
        for ws, by_key in wanted.items():
            syncs = await self._store.realtime_syncs(ws, by_key.keys())
            newest = {key: max(e.seq for e in entries) for key, entries in by_key.items()}
            behind = [
                sync
                for sync in syncs
                if not sync.paused
                and (not sync.backfilled or sync.cursor < newest[sync.source_key])
            ]
            unfinished: set[str] = set()
            for sync in behind:
                if not await self._drain(sync):
                    unfinished.add(sync.id)
            if behind:  # cursors moved: read them again
                syncs = await self._store.realtime_syncs(ws, by_key.keys())
            for key, entries in by_key.items():
                mine = [x for x in syncs if x.source_key == key]
                for change in entries:
                    if all(_delivered(x, change.seq, unfinished) for x in mine):
                        done.append(change.id)
                    else:
                        left += 1
        await streams.ack(self._redis, s.changes_stream, s.realtime_group, done)
        if left:
            wait = max(RETRY_FIRST_SECONDS, self._retry_wait * 2)
            self._retry_wait = min(RETRY_MAX_SECONDS, wait)
            self._retry_at = time.monotonic() + self._retry_wait
        else:
            self._retry_wait, self._retry_at = 0.0, None

    async def _drain(self, sync: Sync) -> bool:
        """One run of the sync; False when it should be tried again (another run holds
        it, or the destination did not acknowledge everything)."""
        try:
            run = await self._runner.run(sync.workspace_id, sync.id)
        except SyncHeld:
            return False
        except ServiceError as error:
            # Paused, deleted, or its audience or destination gone: nothing to retry
            # until an operator acts (the sweep picks a resumed sync up).
            log.info("realtime sync %s not run: %s", sync.id, error.message)
            return True
        except Exception:
            log.exception("realtime sync %s failed; will retry", sync.id)
            return False
        return run.status != FAILED


def _delivered(sync: Sync, seq: int, unfinished: set[str]) -> bool:
    """Whether the entry with `seq` needs nothing more from `sync`: its run finished
    (a run delivers up to the newest change, which the entry's change precedes), or
    the sync is paused (the sweep delivers after the resume), or its cursor passed."""
    return sync.paused or sync.id not in unfinished or (sync.backfilled and sync.cursor >= seq)
