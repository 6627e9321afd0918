"""Persistence of the sync service's own tables (destinations, syncs, runs, dead
letters) through SQLAlchemy Core, on Postgres or SQLite.

Secrets are encrypted here, on the way in, and decrypted on the way out, so no other
module handles ciphertext and the plain secret is never written to a table.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.shared.db.tables import profiles
from services.sync.model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_REMOVAL_FRACTION,
    DEFAULT_TIMEOUT_SECONDS,
    EVENTS,
    FAILED,
    PERIOD_US,
    REALTIME,
    RUNNING,
    DeadLetter,
    Destination,
    DestinationInput,
    Run,
    Sync,
    SyncInput,
    new_id,
)
from services.sync.secrets import SecretBox
from services.sync.tables import (
    sync_dead_letters,
    sync_destinations,
    sync_runs,
    sync_sent_lists,
    syncs,
)


class SyncStore:
    """Reads and writes the sync tables."""

    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self._engine = engine
        self._box = box

    # ----------------------------------------------------------------- destinations

    def _destination(self, row: Any) -> Destination:
        return Destination(
            id=row.destination_id,
            workspace_id=row.workspace_id,
            name=row.name,
            kind=row.kind,
            base_url=row.base_url,
            directory=row.directory,
            file_format=row.file_format,
            secret=self._box.decrypt(row.secret_ciphertext) if row.secret_ciphertext else None,
            rate_limit_per_second=row.rate_limit_per_second,
            batch_size=row.batch_size,
            timeout_seconds=row.timeout_seconds,
            created_at_us=row.created_at_us,
            options=dict(row.options or {}),
        )

    def _destination_values(self, given: DestinationInput) -> dict[str, Any]:
        values: dict[str, Any] = {
            "name": given.name,
            "base_url": given.base_url,
            "directory": given.directory,
            "file_format": given.file_format,
            "rate_limit_per_second": given.rate_limit_per_second,
            "batch_size": given.batch_size or DEFAULT_BATCH_SIZE,
            "timeout_seconds": given.timeout_seconds or DEFAULT_TIMEOUT_SECONDS,
            "options": dict(given.options),
        }
        if given.secret:
            values["secret_ciphertext"] = self._box.encrypt(given.secret)
        return values

    async def create_destination(
        self, ws: str, given: DestinationInput, now_us: int
    ) -> Destination:
        """Store a new destination (its secret encrypted)."""
        values = self._destination_values(given)
        values.update(
            destination_id=new_id("dst"),
            workspace_id=ws,
            kind=given.kind,
            created_at_us=now_us,
            updated_at_us=now_us,
        )
        async with self._engine.begin() as c:
            await c.execute(insert(sync_destinations).values(values))
        found = await self.get_destination(ws, values["destination_id"])
        assert found is not None
        return found

    async def get_destination(self, ws: str, destination_id: str) -> Destination | None:
        """The workspace's destination, or None."""
        async with self._engine.connect() as c:
            row = (
                await c.execute(
                    select(sync_destinations).where(
                        sync_destinations.c.workspace_id == ws,
                        sync_destinations.c.destination_id == destination_id,
                    )
                )
            ).first()
        return self._destination(row) if row is not None else None

    async def list_destinations(self, ws: str, after_id: str, limit: int) -> list[Destination]:
        """Destinations by id (oldest first) after `after_id`."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(sync_destinations)
                .where(
                    sync_destinations.c.workspace_id == ws,
                    sync_destinations.c.destination_id > after_id,
                )
                .order_by(sync_destinations.c.destination_id)
                .limit(limit)
            )
            return [self._destination(r) for r in rows]

    async def update_destination(
        self, ws: str, destination_id: str, given: DestinationInput, now_us: int
    ) -> bool:
        """Replace the destination's settings (the secret only when one is given)."""
        values = self._destination_values(given)
        values["updated_at_us"] = now_us
        async with self._engine.begin() as c:
            result = await c.execute(
                update(sync_destinations)
                .where(
                    sync_destinations.c.workspace_id == ws,
                    sync_destinations.c.destination_id == destination_id,
                )
                .values(values)
            )
        return bool(result.rowcount)

    async def delete_destination(self, ws: str, destination_id: str) -> bool:
        """Delete the destination; False when it does not exist."""
        async with self._engine.begin() as c:
            result = await c.execute(
                delete(sync_destinations).where(
                    sync_destinations.c.workspace_id == ws,
                    sync_destinations.c.destination_id == destination_id,
                )
            )
        return bool(result.rowcount)

    async def destination_in_use(self, ws: str, destination_id: str) -> bool:
        """True when a sync delivers to the destination."""
        async with self._engine.connect() as c:
            row = (
                await c.execute(
                    select(syncs.c.sync_id)
                    .where(syncs.c.workspace_id == ws, syncs.c.destination_id == destination_id)
                    .limit(1)
                )
            ).first()
        return row is not None

    # ----------------------------------------------------------------------- syncs

    @staticmethod
    def _sync(row: Any) -> Sync:
        return Sync(
            id=row.sync_id,
            workspace_id=row.workspace_id,
            destination_id=row.destination_id,
            source=row.source,
            source_key=row.source_key,
            id_type=row.id_type,
            cadence=row.cadence,
            cursor=row.cursor,
            backfilled=row.backfilled,
            delivered_members=row.delivered_members,
            paused=row.paused,
            paused_reason=row.paused_reason,
            max_removal_fraction=row.max_removal_fraction,
            removal_approved=row.removal_approved,
            next_run_at_us=row.next_run_at_us,
            created_at_us=row.created_at_us,
            destination_state=row.destination_state,
            active_within_days=row.active_within_days,
            cursor_profile_id=row.cursor_profile_id,
            event_types=tuple((row.event_filter or {}).get("types", ())),
            event_names=tuple((row.event_filter or {}).get("names", ())),
            exclude_holdout=row.exclude_holdout,
            item_metadata=row.item_metadata,
        )

    async def create_sync(self, ws: str, given: SyncInput, now_us: int) -> Sync:
        """Store a new sync; hourly and daily ones are due at once (their first run
        backfills)."""
        sync_id = new_id("syn")
        async with self._engine.begin() as c:
            await c.execute(
                insert(syncs).values(
                    sync_id=sync_id,
                    workspace_id=ws,
                    destination_id=given.destination_id,
                    source=given.source,
                    source_key=given.source_key,
                    id_type=given.id_type,
                    cadence=given.cadence,
                    cursor=0,
                    backfilled=False,
                    delivered_members=0,
                    paused=given.paused,
                    paused_reason="",
                    max_removal_fraction=given.max_removal_fraction or DEFAULT_MAX_REMOVAL_FRACTION,
                    removal_approved=False,
                    next_run_at_us=now_us if given.cadence in PERIOD_US else None,
                    active_within_days=given.active_within_days,
                    cursor_profile_id=0,
                    exclude_holdout=given.exclude_holdout,
                    item_metadata=given.item_metadata,
                    event_filter=(
                        {"types": list(given.event_types), "names": list(given.event_names)}
                        if given.source == EVENTS
                        else None
                    ),
                    created_at_us=now_us,
                    updated_at_us=now_us,
                )
            )
        found = await self.get_sync(ws, sync_id)
        assert found is not None
        return found

    async def get_sync(self, ws: str, sync_id: str) -> Sync | None:
        """The workspace's sync, or None."""
        async with self._engine.connect() as c:
            row = (
                await c.execute(
                    select(syncs).where(syncs.c.workspace_id == ws, syncs.c.sync_id == sync_id)
                )
            ).first()
        return self._sync(row) if row is not None else None

    async def list_syncs(self, ws: str, after_id: str, limit: int) -> list[Sync]:
        """Syncs by id (oldest first) after `after_id`."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(syncs)
                .where(syncs.c.workspace_id == ws, syncs.c.sync_id > after_id)
                .order_by(syncs.c.sync_id)
                .limit(limit)
            )
            return [self._sync(r) for r in rows]

    async def update_sync(self, ws: str, sync_id: str, values: dict[str, Any], now_us: int) -> bool:
        """Set the given columns of the sync."""
        async with self._engine.begin() as c:
            result = await c.execute(
                update(syncs)
                .where(syncs.c.workspace_id == ws, syncs.c.sync_id == sync_id)
                .values(**values, updated_at_us=now_us)
            )
        return bool(result.rowcount)

    async def save_destination_state(self, sync_id: str, state: dict[str, Any]) -> None:
        """Keep what the destination type needs on the next run (written at once, so a
        crash right after creating something remote does not create it twice)."""
        async with self._engine.begin() as c:
            await c.execute(
                update(syncs).where(syncs.c.sync_id == sync_id).values(destination_state=state)
            )

    async def delete_sync(self, ws: str, sync_id: str) -> bool:
        """Delete the sync and its runs and dead letters; False when it does not exist."""
        async with self._engine.begin() as c:
            result = await c.execute(
                delete(syncs).where(syncs.c.workspace_id == ws, syncs.c.sync_id == sync_id)
            )
            await c.execute(delete(sync_runs).where(sync_runs.c.sync_id == sync_id))
            await c.execute(delete(sync_dead_letters).where(sync_dead_letters.c.sync_id == sync_id))
            await c.execute(delete(sync_sent_lists).where(sync_sent_lists.c.sync_id == sync_id))
        return bool(result.rowcount)

    # ------------------------------------------------------- recommendation syncs

    async def sent_digests(
        self, sync_id: str, profile_ids: Collection[int] | None
    ) -> dict[int, str]:
        """The digest of the list each of these profiles (None: every profile) was last
        sent by the sync."""
        if profile_ids is not None and not profile_ids:
            return {}
        query = select(sync_sent_lists.c.profile_id, sync_sent_lists.c.digest).where(
            sync_sent_lists.c.sync_id == sync_id
        )
        if profile_ids is not None:
            query = query.where(sync_sent_lists.c.profile_id.in_(sorted(profile_ids)))
        async with self._engine.connect() as c:
            return {int(r[0]): str(r[1]) for r in await c.execute(query)}

    async def record_sent(
        self, sync_id: str, holder: str, digests: dict[int, str], now_us: int
    ) -> bool:
        """Remember what the destination now holds for these profiles, in one
        transaction that first checks `holder` still holds the sync's claim (False,
        nothing written, when it lost it)."""
        if not digests:
            return True
        async with self._engine.begin() as c:
            if not await _holds_claim(c, sync_id, holder):
                return False
            await c.execute(
                delete(sync_sent_lists).where(
                    sync_sent_lists.c.sync_id == sync_id,
                    sync_sent_lists.c.profile_id.in_(sorted(digests)),
                )
            )
            await c.execute(
                insert(sync_sent_lists),
                [
                    {"sync_id": sync_id, "profile_id": pid, "digest": d, "sent_at_us": now_us}
                    for pid, d in digests.items()
                ],
            )
        return True

    # ------------------------------------- audience syncs with an activity filter

    async def held_members(self, sync_id: str, ws: str, persons: Collection[int]) -> set[int]:
        """Those of the persons (canonical profiles) the destination holds from this
        sync: a profile of theirs (they may have merged since) was sent as entering and
        not as exiting since."""
        if not persons:
            return set()
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(profiles.c.canonical_id)
                .distinct()
                .select_from(
                    sync_sent_lists.join(
                        profiles, profiles.c.profile_id == sync_sent_lists.c.profile_id
                    )
                )
                .where(
                    sync_sent_lists.c.sync_id == sync_id,
                    profiles.c.workspace_id == ws,
                    profiles.c.canonical_id.in_(sorted(set(persons))),
                )
            )
            return {int(r[0]) for r in rows}

    async def record_members(
        self, sync_id: str, holder: str, ws: str, members: Mapping[int, bool], now_us: int
    ) -> bool:
        """Remember which persons the destination now holds (True) or no longer holds
        (False) from this sync, under `holder`'s claim (False, nothing written, when it
        lost it)."""
        if not members:
            return True
        async with self._engine.begin() as c:
            if not await _holds_claim(c, sync_id, holder):
                return False
            await _write_members(c, sync_id, ws, members, now_us)
        return True

    # ------------------------------------------------------------ claims (replicas)

    async def claim(
        self,
        ws: str,
        sync_id: str,
        holder: str,
        now_us: int,
        until_us: int,
        only_if_due: bool = False,
    ) -> bool:
        """Take the sync for `holder` (one run of one replica) until `until_us` unless
        someone holds an unexpired claim (or, `only_if_due`, unless it is no longer
        due): one conditional UPDATE, so of two replicas exactly one wins, and a replica
        that read the due list before another ran the sync does not run it again."""
        conditions = [
            syncs.c.workspace_id == ws,
            syncs.c.sync_id == sync_id,
            or_(syncs.c.claimed_until_us.is_(None), syncs.c.claimed_until_us < now_us),
        ]
        if only_if_due:
            conditions.append(syncs.c.next_run_at_us <= now_us)
        async with self._engine.begin() as c:
            result = await c.execute(
                update(syncs)
                .where(*conditions)
                .values(claimed_by=holder, claimed_until_us=until_us)
            )
        return bool(result.rowcount)

    async def renew(self, sync_id: str, holder: str, until_us: int) -> bool:
        """Extend the holder's claim; False when it lost it (it expired and another took it)."""
        async with self._engine.begin() as c:
            result = await c.execute(
                update(syncs)
                .where(syncs.c.sync_id == sync_id, syncs.c.claimed_by == holder)
                .values(claimed_until_us=until_us)
            )
        return bool(result.rowcount)

    async def release(self, sync_id: str, holder: str) -> None:
        """Give the claim up (only the holder's)."""
        async with self._engine.begin() as c:
            await c.execute(
                update(syncs)
                .where(syncs.c.sync_id == sync_id, syncs.c.claimed_by == holder)
                .values(claimed_by=None, claimed_until_us=None)
            )

    async def acknowledge(
        self,
        sync_id: str,
        holder: str,
        cursor: int,
        members_delta: int,
        claimed_until_us: int,
        backfilled: bool,
        cursor_profile_id: int = 0,
        members: tuple[str, Mapping[int, bool]] | None = None,
        now_us: int = 0,
    ) -> bool:
        """Advance the cursor past what the destination acknowledged and renew the claim;
        False (nothing written) when `holder` no longer holds the claim. `members`
        (workspace, person -> held): what `record_members` writes, in the same
        transaction."""
        async with self._engine.begin() as c:
            result = await c.execute(
                update(syncs)
                .where(syncs.c.sync_id == sync_id, syncs.c.claimed_by == holder)
                .values(
                    cursor=cursor,
                    cursor_profile_id=cursor_profile_id,
                    delivered_members=syncs.c.delivered_members + members_delta,
                    claimed_until_us=claimed_until_us,
                    backfilled=backfilled,
                )
            )
            if result.rowcount and members is not None:
                await _write_members(c, sync_id, members[0], members[1], now_us)
        return bool(result.rowcount)

    async def due_syncs(self, now_us: int, limit: int) -> list[Sync]:
        """Unpaused hourly/daily syncs whose next run is due, oldest due first."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(syncs)
                .where(
                    syncs.c.next_run_at_us.is_not(None),
                    syncs.c.next_run_at_us <= now_us,
                    syncs.c.paused.is_(False),
                    or_(syncs.c.claimed_until_us.is_(None), syncs.c.claimed_until_us < now_us),
                )
                .order_by(syncs.c.next_run_at_us)
                .limit(limit)
            )
            return [self._sync(r) for r in rows]

    async def realtime_syncs(self, ws: str | None = None, keys: Collection[str] = ()) -> list[Sync]:
        """Realtime syncs, oldest first: of one workspace's sources `keys` when given,
        else every one (the catch-up sweep)."""
        conditions = [syncs.c.cadence == REALTIME, syncs.c.source != EVENTS]
        if ws is not None:
            conditions.append(syncs.c.workspace_id == ws)
        if keys:
            conditions.append(syncs.c.source_key.in_(list(keys)))
        async with self._engine.connect() as c:
            rows = await c.execute(select(syncs).where(*conditions).order_by(syncs.c.sync_id))
            return [self._sync(r) for r in rows]

    async def event_syncs(self) -> list[Sync]:
        """Every unpaused event sync, oldest first."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(syncs)
                .where(syncs.c.source == EVENTS, syncs.c.paused.is_(False))
                .order_by(syncs.c.sync_id)
            )
            return [self._sync(r) for r in rows]

    # ------------------------------------------------------------------------ runs

    async def save_run(self, run: Run) -> None:
        """Insert or update the run's record."""
        values = {
            "workspace_id": run.workspace_id,
            "sync_id": run.sync_id,
            "status": run.status,
            "added": run.added,
            "removed": run.removed,
            "skipped": run.skipped,
            "failed": run.failed,
            "batches": run.batches,
            "retries": run.retries,
            "from_cursor": run.from_cursor,
            "to_cursor": run.to_cursor,
            "error": run.error,
            "started_at_us": run.started_at_us,
            "finished_at_us": run.finished_at_us,
        }
        async with self._engine.begin() as c:
            result = await c.execute(
                update(sync_runs).where(sync_runs.c.run_id == run.id).values(values)
            )
            if not result.rowcount:
                await c.execute(insert(sync_runs).values(run_id=run.id, **values))

    async def abandon_runs(self, sync_id: str, now_us: int) -> None:
        """Mark the sync's runs still `running` as failed: called by the claim's new
        holder, so they belong to a process that died mid-run."""
        async with self._engine.begin() as c:
            await c.execute(
                update(sync_runs)
                .where(sync_runs.c.sync_id == sync_id, sync_runs.c.status == RUNNING)
                .values(
                    status=FAILED,
                    error="abandoned: the process running it stopped; the next run resumed "
                    "from the last acknowledged batch",
                    finished_at_us=now_us,
                )
            )

    async def add_dead_letter(self, run: Run, letter: DeadLetter, payload: Any) -> None:
        """Keep a refused batch with its response and payload."""
        async with self._engine.begin() as c:
            await c.execute(
                insert(sync_dead_letters).values(
                    dead_letter_id=letter.id,
                    workspace_id=run.workspace_id,
                    sync_id=run.sync_id,
                    run_id=run.id,
                    idempotency_key=letter.idempotency_key,
                    first_seq=letter.first_seq,
                    last_seq=letter.last_seq,
                    changes=letter.changes,
                    status_code=letter.status_code,
                    response_body=letter.response_body,
                    payload=payload,
                    created_at_us=letter.created_at_us,
                )
            )

    async def pending_dead_letters(
        self, ws: str, sync_id: str, ids: Sequence[str]
    ) -> list[tuple[DeadLetter, Any]]:
        """The sync's dead letters not yet re-driven (only `ids`, when given), oldest
        first, with their payloads."""
        query = select(sync_dead_letters).where(
            sync_dead_letters.c.workspace_id == ws,
            sync_dead_letters.c.sync_id == sync_id,
            sync_dead_letters.c.redriven_at_us.is_(None),
        )
        if ids:
            query = query.where(sync_dead_letters.c.dead_letter_id.in_(list(ids)))
        async with self._engine.connect() as c:
            rows = await c.execute(query.order_by(sync_dead_letters.c.first_seq))
            return [(_dead_letter(r), r.payload) for r in rows]

    async def redriven(
        self,
        dead_letter_id: str,
        at_us: int | None,
        status_code: int | None,
        response_body: str,
    ) -> None:
        """Record a re-drive: accepted at `at_us`, or refused again with this response."""
        values: dict[str, Any] = (
            {"redriven_at_us": at_us}
            if at_us is not None
            else {"status_code": status_code, "response_body": response_body}
        )
        async with self._engine.begin() as c:
            await c.execute(
                update(sync_dead_letters)
                .where(sync_dead_letters.c.dead_letter_id == dead_letter_id)
                .values(values)
            )

    async def list_runs(self, ws: str, sync_id: str, before_id: str, limit: int) -> list[Run]:
        """The sync's runs, newest first, before `before_id` (empty: from the newest),
        each with its dead letters."""
        query = select(sync_runs).where(
            sync_runs.c.workspace_id == ws, sync_runs.c.sync_id == sync_id
        )
        if before_id:
            query = query.where(sync_runs.c.run_id < before_id)
        async with self._engine.connect() as c:
            rows = list(await c.execute(query.order_by(sync_runs.c.run_id.desc()).limit(limit)))
            letters: dict[str, list[DeadLetter]] = {r.run_id: [] for r in rows}
            if rows:
                for d in await c.execute(
                    select(sync_dead_letters)
                    .where(sync_dead_letters.c.run_id.in_(list(letters)))
                    .order_by(sync_dead_letters.c.first_seq)
                ):
                    letters[d.run_id].append(_dead_letter(d))
        return [_run(r, letters[r.run_id]) for r in rows]


def _dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.dead_letter_id,
        idempotency_key=row.idempotency_key,
        first_seq=row.first_seq,
        last_seq=row.last_seq,
        status_code=row.status_code,
        response_body=row.response_body,
        changes=row.changes,
        created_at_us=row.created_at_us,
        redriven_at_us=row.redriven_at_us,
    )


def _run(row: Any, letters: Sequence[DeadLetter]) -> Run:
    return Run(
        id=row.run_id,
        workspace_id=row.workspace_id,
        sync_id=row.sync_id,
        from_cursor=row.from_cursor,
        started_at_us=row.started_at_us,
        status=row.status,
        to_cursor=row.to_cursor,
        added=row.added,
        removed=row.removed,
        skipped=row.skipped,
        failed=row.failed,
        batches=row.batches,
        retries=row.retries,
        error=row.error,
        finished_at_us=row.finished_at_us,
        dead_letters=list(letters),
    )


__all__ = ["SyncStore"]


# What `sync_sent_lists` holds for a person an audience sync delivered as entering.
MEMBER = "member"


async def _write_members(
    c: AsyncConnection, sync_id: str, ws: str, members: Mapping[int, bool], now_us: int
) -> None:
    """Forget every profile of these persons (one merged into them included), then
    remember the persons the destination holds."""
    if not members:
        return
    persons = sorted(members)
    of_persons = select(profiles.c.profile_id).where(
        profiles.c.workspace_id == ws, profiles.c.canonical_id.in_(persons)
    )
    await c.execute(
        delete(sync_sent_lists).where(
            sync_sent_lists.c.sync_id == sync_id,
            or_(
                sync_sent_lists.c.profile_id.in_(persons),
                sync_sent_lists.c.profile_id.in_(of_persons),
            ),
        )
    )
    held = [p for p in persons if members[p]]
    if held:
        await c.execute(
            insert(sync_sent_lists),
            [
                {"sync_id": sync_id, "profile_id": p, "digest": MEMBER, "sent_at_us": now_us}
                for p in held
            ],
        )


async def _holds_claim(c: AsyncConnection, sync_id: str, holder: str) -> bool:
    """True while `holder` holds the sync's claim (checked inside the writing
    transaction, so a run that lost its claim writes nothing)."""
    held = await c.execute(
        select(syncs.c.sync_id).where(syncs.c.sync_id == sync_id, syncs.c.claimed_by == holder)
    )
    return held.first() is not None
