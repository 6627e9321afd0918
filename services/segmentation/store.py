"""Persistence of the segmentation service: definitions, memberships, the change log and
computed values in the database (Postgres or SQLite), through SQLAlchemy Core.

Every membership write of a workspace first takes that workspace's row of
``change_sequences`` (a row lock on Postgres, the write lock on SQLite) and only then
reads the current members, diffs and writes. So concurrent recomputes of one workspace
serialise, each diff is against committed state (no double ``entered``), and change
seqs are assigned in commit order: a reader polling ``seq > last`` never skips a row
that commits late. That rule, and the tables it guards, are the change-log contract of
``services/shared/db/membership_log.py``, which the profile service's erasure follows too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.segmentation import sql
from services.segmentation.account_store import AccountStore
from services.segmentation.accounts import account_id_of
from services.segmentation.model import (
    ENTERED,
    EXITED,
    LIVE,
    AudienceRecord,
    Change,
    ComputedTraitRecord,
    Diff,
    Member,
    ProfileFacts,
    ProfileRef,
    Progress,
)
from services.segmentation.performance_store import PerformanceStore
from services.segmentation.status_tables import (
    audience_status,
    computed_trait_status,
)
from services.segmentation.tables import (
    audience_versions,
    audiences,
    computed_trait_values,
    computed_traits,
    membership_changes,
    memberships,
    prediction_scores,
)
from services.shared.db.membership_log import lock_change_sequence, take_change_seqs
from services.shared.db.tables import events, identities, profile_traits, profiles
from services.shared.phases import phase

# Rows per statement for bulk deletes/inserts: well under asyncpg's 32,767 parameters.
CHUNK = 5_000
# How often batch evaluation refreshes planner statistics (see fresh_statistics).
ANALYZE_EVERY = 600.0


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _json_or_null(value: Any) -> Any:
    # JSON null would be stored as the JSON literal; the language treats SQL NULL and
    # JSON null alike, and SQL NULL keeps "no value" cheap to test.
    return sa.null() if value is None else value


def _audience(row: Any) -> AudienceRecord:
    return AudienceRecord(
        audience_id=row.audience_id,
        key=row.key,
        name=row.name,
        description=row.description or "",
        definition=row.definition,
        version=row.current_version,
        live_version=row.live_version,
        state=row.state,
        size=row.size,
        progress=Progress(row.progress_done, row.progress_total, row.progress_stage or ""),
        account_level=row.account_level,
        created_at_us=row.created_at_us,
        updated_at_us=row.updated_at_us,
        failure_reason=row.failure_reason or "",
        realtime=row.realtime,
        holdout_share=row.holdout_share,
        goal=row.goal,
    )


def _computed(row: Any) -> ComputedTraitRecord:
    return ComputedTraitRecord(
        key=row.key,
        name=row.name or "",
        definition=row.definition,
        version=row.version,
        state=row.state,
        created_at_us=row.created_at_us,
        updated_at_us=row.updated_at_us,
        failure_reason=row.failure_reason or "",
        realtime=row.realtime,
    )


_AUDIENCE_COLUMNS = (
    *audiences.c,
    audience_versions.c.definition,
    *[c for c in audience_status.c if c.name not in ("audience_id", "workspace_id")],
)


def _audience_query() -> sa.Select[Any]:
    return select(*_AUDIENCE_COLUMNS).select_from(
        audiences.join(
            audience_versions,
            and_(
                audience_versions.c.audience_id == audiences.c.audience_id,
                audience_versions.c.version == audiences.c.current_version,
            ),
        ).join(audience_status, audience_status.c.audience_id == audiences.c.audience_id)
    )


_COMPUTED_COLUMNS = (
    *computed_traits.c,
    computed_trait_status.c.name,
    computed_trait_status.c.version,
    computed_trait_status.c.state,
    computed_trait_status.c.failure_reason,
)


def _computed_query() -> sa.Select[Any]:
    return select(*_COMPUTED_COLUMNS).select_from(
        computed_traits.join(
            computed_trait_status,
            and_(
                computed_trait_status.c.workspace_id == computed_traits.c.workspace_id,
                computed_trait_status.c.key == computed_traits.c.key,
            ),
        )
    )


def _members_with_profiles() -> Any:
    """Membership rows with their profile (none for an account member id)."""
    return memberships.outerjoin(profiles, profiles.c.profile_id == memberships.c.profile_id)


class Scratch:
    """One transaction that is always rolled back: dependencies written here are seen
    by the evaluations made here and by nobody else (Preview as of an instant)."""

    def __init__(self, store: SegmentationStore, connection: AsyncConnection, ws: str) -> None:
        self._store = store
        self._connection = connection
        self._ws = ws

    async def evaluate_audience(
        self, definition: Any, now_us: int, account_level: bool = False
    ) -> set[int]:
        """Members of `definition` at `now_us`, reading what this scratch wrote."""
        if account_level:
            return await self._store.accounts.evaluate(
                self._ws, definition, now_us, self._connection
            )
        return await sql.evaluate_audience(
            self._connection, definition, workspace_id=self._ws, now_us=now_us
        )

    async def evaluate_computed(self, definition: Any, now_us: int) -> dict[int, Any]:
        """Values of a computed trait at `now_us`."""
        return await sql.evaluate_computed_trait(
            self._connection, definition, workspace_id=self._ws, now_us=now_us
        )

    async def replace_members(self, audience_id: int, members: Collection[int]) -> None:
        """Make `members` the audience's members inside this scratch transaction."""
        c = self._connection
        await c.execute(delete(memberships).where(memberships.c.audience_id == audience_id))
        rows = [
            {
                "workspace_id": self._ws,
                "audience_id": audience_id,
                "profile_id": p,
                "entered_at_us": 0,
            }
            for p in members
        ]
        for chunk in _chunks(rows):
            await c.execute(insert(memberships), chunk)

    async def replace_computed(self, key: str, values: Mapping[int, Any]) -> None:
        """Make `values` the computed trait's values inside this scratch transaction."""
        c = self._connection
        await c.execute(
            delete(computed_trait_values).where(
                computed_trait_values.c.workspace_id == self._ws,
                computed_trait_values.c.key == key,
            )
        )
        rows = [
            {
                "workspace_id": self._ws,
                "profile_id": p,
                "key": key,
                "value": _json_or_null(v),
                "computed_at_us": 0,
            }
            for p, v in values.items()
        ]
        for chunk in _chunks(rows):
            await c.execute(insert(computed_trait_values), chunk)


class SegmentationStore:
    """The segmentation tables of one database."""

    def __init__(self, engine: AsyncEngine, analyze_every_seconds: float = ANALYZE_EVERY) -> None:
        self._engine = engine
        self._analyze_every = analyze_every_seconds
        self._analyzed_at: float | None = None
        self.accounts = AccountStore(engine)
        self.performance = PerformanceStore(engine)

    async def fresh_statistics(self) -> None:
        """Refresh the planner statistics of the tables batch evaluation reads, at most
        every `analyze_every_seconds` per process (Postgres only).

        Autovacuum never analyzes a partitioned table's parent, and funnel plans depend
        on its statistics: without them a 3-step funnel over 4k events took minutes
        instead of half a second.
        """
        if self._engine.dialect.name != "postgresql":
            return
        now = time.monotonic()
        if self._analyzed_at is not None and now - self._analyzed_at < self._analyze_every:
            return
        self._analyzed_at = now
        async with self._engine.begin() as c:
            await c.execute(sa.text("ANALYZE events, profiles, profile_traits"))

    # ------------------------------------------------------------------ audiences

    async def get_audience(self, ws: str, key: str) -> AudienceRecord | None:
        """The live (not deleted) audience with `key`, or None."""
        query = _audience_query().where(
            audiences.c.workspace_id == ws,
            audiences.c.key == key,
            audiences.c.deleted_at_us.is_(None),
        )
        async with self._engine.connect() as c:
            row = (await c.execute(query)).first()
        return _audience(row) if row else None

    async def list_audiences(self, ws: str, after_key: str, limit: int) -> list[AudienceRecord]:
        """Audiences ordered by key, starting after `after_key`."""
        query = (
            _audience_query()
            .where(
                audiences.c.workspace_id == ws,
                audiences.c.deleted_at_us.is_(None),
                audiences.c.key > after_key,
            )
            .order_by(audiences.c.key)
            .limit(limit)
        )
        async with self._engine.connect() as c:
            return [_audience(r) for r in await c.execute(query)]

    async def audience_definitions(self, ws: str) -> dict[str, AudienceRecord]:
        """Every live audience of the workspace by key."""
        query = _audience_query().where(
            audiences.c.workspace_id == ws, audiences.c.deleted_at_us.is_(None)
        )
        async with self._engine.connect() as c:
            return {r.key: _audience(r) for r in await c.execute(query)}

    async def audience_keys(self, ws: str, ids: Collection[int]) -> dict[int, str]:
        """audience_id -> key, deleted audiences included (the change log outlives them)."""
        if not ids:
            return {}
        query = select(audiences.c.audience_id, audiences.c.key).where(
            audiences.c.workspace_id == ws, audiences.c.audience_id.in_(list(ids))
        )
        async with self._engine.connect() as c:
            return {r.audience_id: r.key.split("#", 1)[0] for r in await c.execute(query)}

    async def create_audience(
        self,
        ws: str,
        *,
        key: str,
        name: str,
        description: str,
        definition: Any,
        account_level: bool,
        state: str,
        now_us: int,
        realtime: bool = False,
        holdout_share: float = 0.0,
        goal: Any = None,
    ) -> AudienceRecord:
        """Insert an audience at version 1 (a deleted audience's key is freed first)."""
        async with self._engine.begin() as c:
            # The change log of a deleted audience keeps its id; its key is renamed
            # (key#id) so the key can be used again.
            await c.execute(
                update(audiences)
                .where(
                    audiences.c.workspace_id == ws,
                    audiences.c.key == key,
                    audiences.c.deleted_at_us.is_not(None),
                )
                .values(
                    key=sa.literal(key + "#").concat(sa.cast(audiences.c.audience_id, sa.String))
                )
            )
            result = await c.execute(
                insert(audiences).values(
                    workspace_id=ws,
                    key=key,
                    name=name,
                    current_version=1,
                    backfill=state != LIVE,
                    account_level=account_level,
                    realtime=realtime,
                    holdout_share=holdout_share,
                    goal=_json_or_null(goal),
                    created_at_us=now_us,
                    updated_at_us=now_us,
                )
            )
            assert result.inserted_primary_key is not None  # an INSERT of one row
            audience_id = result.inserted_primary_key[0]
            await c.execute(
                insert(audience_status).values(
                    audience_id=audience_id,
                    workspace_id=ws,
                    description=description,
                    state=state,
                    live_version=1 if state == LIVE else None,
                    size=0,
                    progress_done=0,
                    progress_total=0,
                    progress_stage="",
                )
            )
            await c.execute(
                insert(audience_versions).values(
                    audience_id=audience_id,
                    version=1,
                    workspace_id=ws,
                    definition=definition,
                    created_at_us=now_us,
                )
            )
        found = await self.get_audience(ws, key)
        assert found is not None
        return found

    async def update_audience(
        self,
        ws: str,
        audience: AudienceRecord,
        *,
        name: str,
        description: str,
        definition: Any | None,
        state: str,
        now_us: int,
        realtime: bool | None = None,
        holdout_share: float | None = None,
        goal: Any = None,
    ) -> AudienceRecord:
        """Replace name/description (and the realtime flag, holdout share and goal
        unless None); a new `definition` becomes the next version."""
        values: dict[str, Any] = {"name": name, "updated_at_us": now_us}
        if realtime is not None:
            values["realtime"] = realtime
        if holdout_share is not None:
            values["holdout_share"] = holdout_share
        if goal is not None:
            # {} clears the goal (the API's way of saying "no goal").
            values["goal"] = _json_or_null(goal or None)
        status: dict[str, Any] = {"description": description}
        async with self._engine.begin() as c:
            if definition is not None:
                version = audience.version + 1
                await c.execute(
                    insert(audience_versions).values(
                        audience_id=audience.audience_id,
                        version=version,
                        workspace_id=ws,
                        definition=definition,
                        created_at_us=now_us,
                    )
                )
                values["current_version"] = version
                status["state"] = state
                status["failure_reason"] = ""
                if state == LIVE:  # nothing to backfill (a context audience)
                    status["live_version"] = version
            await c.execute(
                update(audiences)
                .where(audiences.c.audience_id == audience.audience_id)
                .values(**values)
            )
            await c.execute(
                update(audience_status)
                .where(audience_status.c.audience_id == audience.audience_id)
                .values(**status)
            )
        found = await self.get_audience(ws, audience.key)
        assert found is not None
        return found

    async def set_progress(
        self, audience_id: int, state: str, progress: Progress, failure_reason: str = ""
    ) -> None:
        """Record a backfill's state and progress (readable by GetAudience meanwhile),
        and why it failed when `state` is FAILED."""
        async with self._engine.begin() as c:
            await c.execute(
                update(audience_status)
                .where(audience_status.c.audience_id == audience_id)
                .values(
                    state=state,
                    progress_done=progress.done,
                    progress_total=progress.total,
                    progress_stage=progress.stage,
                    failure_reason=failure_reason,
                )
            )

    # ------------------------------------------------------------------ memberships

    async def evaluate_audience(
        self, ws: str, definition: Any, now_us: int, account_level: bool = False
    ) -> set[int]:
        """The canonical profile ids (account member ids when `account_level`) matching
        `definition` at `now_us` (in SQL)."""
        await self.fresh_statistics()
        if account_level:
            return await self.accounts.evaluate(ws, definition, now_us)
        async with self._engine.connect() as c:
            return await sql.evaluate_audience(c, definition, workspace_id=ws, now_us=now_us)

    async def _current(self, c: AsyncConnection, audience_id: int) -> list[Any]:
        query = (
            select(
                memberships.c.profile_id,
                profiles.c.canonical_id,
                memberships.c.entered_at_us,
            )
            .select_from(_members_with_profiles())
            .where(memberships.c.audience_id == audience_id)
        )
        return list(await c.execute(query))

    async def apply_members(
        self,
        ws: str,
        audience_id: int,
        version: int,
        members: Collection[int],
        now_us: int,
        progress: Progress,
    ) -> Diff:
        """Make `members` (canonical ids) the audience's members as of `now_us`: write
        only the differences with their change records, serve `version`, set LIVE with
        `progress` (all in one transaction: readers see the old or the new version).

        Rows of profiles merged since they entered are re-keyed to the survivor
        without a change record (the person never left).
        """
        unique = sorted(set(members))
        async with self._engine.begin() as c:
            new = await _temp_table(c, "seg_new", sa.Column("pid", sa.BigInteger))
            for chunk in _chunks(unique):
                await c.execute(insert(new), [{"pid": p} for p in chunk])
            writer = await MembershipWriter.start(c, ws, now_us)
            pairs = select(sa.literal(audience_id, sa.BigInteger).label("aud"), new.c.pid)
            (diff,) = await writer.apply([(audience_id, version)], pairs, progress, [len(unique)])
            await writer.finish()
            await drop_temp_table(c, new)
        return diff

    async def recompute_audiences(
        self, ws: str, batch: Sequence[AudienceRecord], now_us: int, progress: Progress
    ) -> list[Diff]:
        """Evaluate `batch` (none may reference another: see `dependency_layers`) in one
        rollup pass over the events and apply each audience's members as
        `apply_members` does, in one transaction, set-based: the rollup lands in a
        temporary table and the diff, the membership rows and the change log of the
        whole batch are written by INSERT ... SELECT / DELETE statements; only the
        differences come back to Python (for the hot state)."""
        await self.fresh_statistics()
        definitions = [a.definition for a in batch]
        async with self._engine.connect() as c:
            transaction = await c.begin()
            with phase("evaluate"):
                await sql.batch_settings(c)
                query = sql.compile_audiences(
                    definitions, workspace_id=ws, now_us=now_us, dialect=c.dialect.name
                )
                rollup, pairs = await rollup_pairs(c, [a.audience_id for a in batch], query)
                counts = [func.count().filter(flag) for flag in list(rollup.c)[1:]]
                sizes = (await c.execute(select(*counts))).one()
            # Evaluation ran outside the workspace lock; the diff below is against the
            # memberships committed when the lock is granted.
            with phase("lock"):
                writer = await MembershipWriter.start(c, ws, now_us)
            diffs = await writer.apply(
                [(a.audience_id, a.version) for a in batch], pairs, progress, list(sizes)
            )
            await writer.finish()
            await drop_temp_table(c, rollup)
            with phase("commit"):
                await transaction.commit()
        return diffs

    async def delete_audience(self, ws: str, audience_id: int, now_us: int) -> list[int]:
        """Soft-delete an audience: its members exit (logged), its rows go. Returns the
        canonical ids that exited."""
        async with self._engine.begin() as c:
            await lock_change_sequence(c, ws)
            rows = await self._current(c, audience_id)
            version = (
                await c.execute(
                    select(audiences.c.current_version).where(
                        audiences.c.audience_id == audience_id
                    )
                )
            ).scalar_one()
            exited = sorted(
                {r.canonical_id if r.canonical_id is not None else r.profile_id for r in rows}
            )
            await c.execute(delete(memberships).where(memberships.c.audience_id == audience_id))
            if exited:
                first = await take_change_seqs(c, ws, len(exited))
                change_rows = [
                    {
                        "workspace_id": ws,
                        "seq": first + i,
                        "audience_id": audience_id,
                        "profile_id": p,
                        "kind": EXITED,
                        "at_us": now_us,
                        "version": version,
                    }
                    for i, p in enumerate(exited)
                ]
                for chunk in _chunks(change_rows):
                    await c.execute(insert(membership_changes), chunk)
            await c.execute(
                update(audiences)
                .where(audiences.c.audience_id == audience_id)
                .values(deleted_at_us=now_us)
            )
            await c.execute(
                update(audience_status)
                .where(audience_status.c.audience_id == audience_id)
                .values(size=0)
            )
        return exited

    async def members(self, audience_id: int) -> dict[int, int]:
        """Current members as canonical id -> entered_at_us."""
        async with self._engine.connect() as c:
            rows = await self._current(c, audience_id)
        out: dict[int, int] = {}
        for r in rows:
            canonical = r.canonical_id if r.canonical_id is not None else r.profile_id
            out[canonical] = min(out.get(canonical, r.entered_at_us), r.entered_at_us)
        return out

    async def members_page(
        self, ws: str, audience_id: int, after_pid: int, limit: int
    ) -> tuple[list[Member], int]:
        """Members by person (canonical id) after `after_pid`, at most `limit` (keyset
        paging: stable while members come and go), and how many people the audience
        has.

        A row still on a profile merged away since it entered counts for the survivor,
        entered at the earliest of the person's rows, so the list names the survivor
        from the moment of the merge, not from the next write. Those rows are few (the
        next write re-keys them) and are found from the workspace's merged-away
        profiles (a partial index), so a page costs an index range scan of `limit`
        rows as before, not a join of every member to ``profiles``."""
        m = memberships
        async with self._engine.connect() as c:
            moved = list(
                await c.execute(
                    select(profiles.c.profile_id, profiles.c.canonical_id, m.c.entered_at_us)
                    .select_from(
                        profiles.join(
                            m,
                            and_(
                                m.c.audience_id == audience_id,
                                m.c.profile_id == profiles.c.profile_id,
                            ),
                        )
                    )
                    .where(profiles.c.workspace_id == ws, sql.merged_away(profiles))
                )
            )
            people: dict[int, int] = {}
            for r in moved:
                people[r.canonical_id] = min(
                    people.get(r.canonical_id, r.entered_at_us), r.entered_at_us
                )
            own: dict[int, int] = {}
            for chunk in _chunks(sorted(people)):
                for r in await c.execute(
                    select(m.c.profile_id, m.c.entered_at_us).where(
                        m.c.audience_id == audience_id, m.c.profile_id.in_(chunk)
                    )
                ):
                    own[r.profile_id] = r.entered_at_us
            page = select(m.c.profile_id, m.c.entered_at_us).where(
                m.c.audience_id == audience_id, m.c.profile_id > after_pid
            )
            if moved:
                page = page.where(m.c.profile_id.not_in([r.profile_id for r in moved]))
            found = {
                r.profile_id: r.entered_at_us
                for r in await c.execute(page.order_by(m.c.profile_id).limit(limit))
            }
            rows = (
                await c.execute(select(func.count()).where(m.c.audience_id == audience_id))
            ).scalar_one()
        for person, at in people.items():
            if person > after_pid:
                found[person] = min(at, own.get(person, at))
        total = int(rows) - len(moved) + len(people.keys() - own.keys())
        return [Member(p, found[p]) for p in sorted(found)[:limit]], total

    # ------------------------------------------------------------------ change log

    async def history(
        self, ws: str, audience_id: int, profile_id: int
    ) -> tuple[list[Change], dict[int, int]]:
        """Every change of the audience for the profile and the profiles merged into it,
        and when each of those merged profiles was merged away (profile -> instant).

        The person's profile ids as one IN list, not ``profile_id = p OR IN (merged)``:
        the OR kept Postgres off ``ix_membership_changes_profile`` and on a walk of
        every record of the audience (33 ms instead of 0.1 ms at 500k records)."""
        absorbed = (
            profiles.c.workspace_id == ws,
            profiles.c.canonical_id == profile_id,
            profiles.c.profile_id != profile_id,
        )
        query = (
            select(membership_changes)
            .where(
                membership_changes.c.workspace_id == ws,
                membership_changes.c.audience_id == audience_id,
                membership_changes.c.profile_id.in_(
                    sa.union_all(
                        select(profiles.c.profile_id).where(*absorbed),
                        select(sa.literal(profile_id, sa.BigInteger)),
                    )
                ),
            )
            .order_by(membership_changes.c.seq)
        )
        async with self._engine.connect() as c:
            rows = list(await c.execute(query))
            merged = select(profiles.c.profile_id, profiles.c.merged_at_us).where(*absorbed)
            merged_at = {r.profile_id: r.merged_at_us or 0 for r in await c.execute(merged)}
        return [change_from_row(r, "") for r in rows], merged_at

    async def changes_after(
        self, ws: str, after_seq: int, audience_ids: Collection[int] | None, limit: int
    ) -> list[Change]:
        """Changes of the workspace with seq > after_seq, in seq order."""
        query = (
            select(membership_changes)
            .where(membership_changes.c.workspace_id == ws, membership_changes.c.seq > after_seq)
            .order_by(membership_changes.c.seq)
            .limit(limit)
        )
        if audience_ids is not None:
            query = query.where(membership_changes.c.audience_id.in_(list(audience_ids)))
        async with self._engine.connect() as c:
            rows = list(await c.execute(query))
        return [change_from_row(r, "") for r in rows]

    # ------------------------------------------------------------------ computed traits

    async def get_computed(self, ws: str, key: str) -> ComputedTraitRecord | None:
        """The computed trait with `key`, or None."""
        query = _computed_query().where(
            computed_traits.c.workspace_id == ws, computed_traits.c.key == key
        )
        async with self._engine.connect() as c:
            row = (await c.execute(query)).first()
        return _computed(row) if row else None

    async def list_computed(
        self, ws: str, after_key: str = "", limit: int | None = None
    ) -> list[ComputedTraitRecord]:
        """Computed traits ordered by key after `after_key`."""
        query = (
            _computed_query()
            .where(computed_traits.c.workspace_id == ws, computed_traits.c.key > after_key)
            .order_by(computed_traits.c.key)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._engine.connect() as c:
            return [_computed(r) for r in await c.execute(query)]

    async def save_computed(
        self,
        ws: str,
        *,
        key: str,
        name: str,
        definition: Any,
        state: str,
        now_us: int,
        existing: ComputedTraitRecord | None,
        realtime: bool | None = None,
    ) -> ComputedTraitRecord:
        """Insert a computed trait, or replace its name/definition (a new definition is a
        new version)."""
        async with self._engine.begin() as c:
            if existing is None:
                await c.execute(
                    insert(computed_traits).values(
                        workspace_id=ws,
                        key=key,
                        definition=definition,
                        realtime=bool(realtime),
                        created_at_us=now_us,
                        updated_at_us=now_us,
                    )
                )
                await c.execute(
                    insert(computed_trait_status).values(
                        workspace_id=ws, key=key, name=name, version=1, state=state
                    )
                )
            else:
                changed = definition != existing.definition
                flag = existing.realtime if realtime is None else realtime
                await c.execute(
                    update(computed_traits)
                    .where(computed_traits.c.workspace_id == ws, computed_traits.c.key == key)
                    .values(definition=definition, updated_at_us=now_us, realtime=flag)
                )
                await c.execute(
                    update(computed_trait_status)
                    .where(
                        computed_trait_status.c.workspace_id == ws,
                        computed_trait_status.c.key == key,
                    )
                    .values(
                        name=name,
                        version=existing.version + (1 if changed else 0),
                        state=state if changed else existing.state,
                        failure_reason="" if changed else existing.failure_reason,
                    )
                )
        found = await self.get_computed(ws, key)
        assert found is not None
        return found

    async def set_computed_state(
        self, ws: str, key: str, state: str, failure_reason: str = ""
    ) -> None:
        """Record a computed trait's state, and why it failed when `state` is FAILED."""
        async with self._engine.begin() as c:
            await c.execute(
                update(computed_trait_status)
                .where(
                    computed_trait_status.c.workspace_id == ws,
                    computed_trait_status.c.key == key,
                )
                .values(state=state, failure_reason=failure_reason)
            )

    async def evaluate_computed(self, ws: str, definition: Any, now_us: int) -> dict[int, Any]:
        """Canonical profile id -> value of a computed trait at `now_us` (in SQL)."""
        await self.fresh_statistics()
        async with self._engine.connect() as c:
            return await sql.evaluate_computed_trait(c, definition, workspace_id=ws, now_us=now_us)

    async def apply_computed(
        self, ws: str, key: str, values: Mapping[int, Any], now_us: int
    ) -> tuple[dict[int, Any], list[int]]:
        """Store `values` (every canonical profile's value); write only what changed.
        Returns (changed profile -> new value, profiles whose row was removed)."""
        async with self._engine.begin() as c:
            return await write_computed_values(c, ws, key, values, now_us)

    async def computed_values(self, ws: str, key: str) -> dict[int, Any]:
        """The stored value of a computed trait per profile."""
        cv = computed_trait_values
        query = select(cv.c.profile_id, cv.c.value).where(cv.c.workspace_id == ws, cv.c.key == key)
        async with self._engine.connect() as c:
            return {r.profile_id: r.value for r in await c.execute(query)}

    async def delete_computed(self, ws: str, key: str) -> list[int]:
        """Delete a computed trait and its values; returns the profiles that had one."""
        cv = computed_trait_values
        async with self._engine.begin() as c:
            pids = [
                r.profile_id
                for r in await c.execute(
                    select(cv.c.profile_id).where(cv.c.workspace_id == ws, cv.c.key == key)
                )
            ]
            await c.execute(delete(cv).where(cv.c.workspace_id == ws, cv.c.key == key))
            for table in (computed_traits, computed_trait_status):
                await c.execute(delete(table).where(table.c.workspace_id == ws, table.c.key == key))
        return pids

    # ------------------------------------------------------------------ scratch

    @asynccontextmanager
    async def scratch(self, ws: str) -> AsyncIterator[Scratch]:
        """A transaction that is rolled back on exit, whatever happens."""
        await self.fresh_statistics()
        async with self._engine.connect() as c:
            transaction = await c.begin()
            try:
                yield Scratch(self, c, ws)
            finally:
                await transaction.rollback()

    # ------------------------------------------------------------------ profiles

    async def resolve(self, ws: str, id_type: str, id_value: str) -> int | None:
        """The canonical (alive) profile of an identifier, or None."""
        query = (
            select(profiles.c.canonical_id)
            .select_from(
                identities.join(profiles, profiles.c.profile_id == identities.c.profile_id)
            )
            .where(
                identities.c.workspace_id == ws,
                identities.c.id_type == id_type,
                identities.c.id_value == id_value,
            )
        )
        async with self._engine.connect() as c:
            pid = (await c.execute(query)).scalar()
            if pid is None:
                return None
            alive = (
                await c.execute(
                    select(profiles.c.profile_id).where(
                        profiles.c.profile_id == pid, profiles.c.deleted_at_us.is_(None)
                    )
                )
            ).scalar()
        return int(alive) if alive is not None else None

    async def refs(self, ws: str, pids: Sequence[int]) -> list[ProfileRef]:
        """ProfileRefs in the order of `pids`: a profile merged away is named by its
        survivor, with the identifiers of the survivor and of every profile merged into
        it; an account member by its group_id."""
        held = [p for p in pids if account_id_of(p) is not None]
        if held:
            accounts = await self.accounts.refs(ws, held)
            people = [p for p in pids if account_id_of(p) is None]
            others = dict(zip(people, await self.refs(ws, people), strict=True))
            return [accounts.get(p) or others.get(p) or ProfileRef(p) for p in pids]
        survivor: dict[int, int] = {p: p for p in pids}
        found: dict[int, list[tuple[str, str]]] = {}
        async with self._engine.connect() as c:
            for chunk in _chunks(sorted(survivor)):
                query = select(profiles.c.profile_id, profiles.c.canonical_id).where(
                    profiles.c.workspace_id == ws,
                    profiles.c.profile_id.in_(chunk),
                    profiles.c.canonical_id != profiles.c.profile_id,
                )
                for r in await c.execute(query):
                    survivor[r.profile_id] = r.canonical_id
            people = sorted(set(survivor.values()))
            found = {p: [] for p in people}
            for chunk in _chunks(people):
                query = (
                    select(profiles.c.canonical_id, identities.c.id_type, identities.c.id_value)
                    .select_from(
                        identities.join(profiles, profiles.c.profile_id == identities.c.profile_id)
                    )
                    .where(identities.c.workspace_id == ws, profiles.c.canonical_id.in_(chunk))
                )
                for r in await c.execute(query):
                    found[r.canonical_id].append((r.id_type, r.id_value))
        return [ProfileRef(survivor[p], tuple(sorted(found[survivor[p]]))) for p in pids]

    async def facts(self, ws: str, pid: int) -> ProfileFacts:
        """Events, traits, computed values, memberships and scores of a canonical
        profile and every profile merged into it."""
        own = select(profiles.c.profile_id).where(
            profiles.c.workspace_id == ws, profiles.c.canonical_id == pid
        )
        facts = ProfileFacts(pid)
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(
                    events.c.seq,
                    events.c.type,
                    events.c.name,
                    events.c.timestamp_us,
                    events.c.properties,
                )
                .where(events.c.workspace_id == ws, events.c.profile_id.in_(own))
                .order_by(events.c.timestamp_us, events.c.seq)
            )
            facts.events = [dict(r._mapping) for r in rows]
            latest: dict[str, tuple[tuple[int, int], Any]] = {}
            for r in await c.execute(
                select(profile_traits).where(
                    profile_traits.c.workspace_id == ws, profile_traits.c.profile_id.in_(own)
                )
            ):
                order = (r.timestamp_us, r.seq)
                if r.key not in latest or latest[r.key][0] < order:
                    latest[r.key] = (order, r.value)
            facts.traits = {k: v for k, (_, v) in latest.items() if v is not None}
            for r in await c.execute(
                select(computed_trait_values.c.key, computed_trait_values.c.value).where(
                    computed_trait_values.c.workspace_id == ws,
                    computed_trait_values.c.profile_id == pid,
                )
            ):
                if r.value is not None:
                    facts.computed[r.key] = r.value
            for r in await c.execute(
                select(audiences.c.key)
                .select_from(
                    memberships.join(
                        audiences, audiences.c.audience_id == memberships.c.audience_id
                    )
                )
                .where(
                    memberships.c.workspace_id == ws,
                    memberships.c.profile_id.in_(own),
                    audiences.c.deleted_at_us.is_(None),
                )
            ):
                facts.audiences.add(r.key)
            for r in await c.execute(
                select(prediction_scores).where(
                    prediction_scores.c.workspace_id == ws,
                    prediction_scores.c.profile_id.in_(own),
                )
            ):
                facts.predictions[r.key] = {
                    "probability": r.probability,
                    "percentile": r.percentile,
                }
        return facts

    async def prediction_keys(self, ws: str, keys: Collection[str]) -> set[str]:
        """Those of `keys` that name a prediction of the workspace: one with scores
        (docs/decisions.md, "Audience definition limits")."""
        found: set[str] = set()
        async with self._engine.connect() as c:
            for key in sorted(keys):
                # One indexed probe per key (the primary key leads with the key).
                query = (
                    select(prediction_scores.c.key)
                    .where(prediction_scores.c.key == key, prediction_scores.c.workspace_id == ws)
                    .limit(1)
                )
                if (await c.execute(query)).first() is not None:
                    found.add(key)
        return found

    async def workspaces(self) -> list[str]:
        """Workspaces with at least one audience or computed trait."""
        query = sa.union(
            select(audiences.c.workspace_id).where(audiences.c.deleted_at_us.is_(None)),
            select(computed_traits.c.workspace_id),
        )
        async with self._engine.connect() as c:
            return sorted(r[0] for r in await c.execute(query))

    async def universe_size(self, ws: str) -> int:
        """How many alive canonical profiles the workspace has."""
        query = select(func.count()).where(
            profiles.c.workspace_id == ws,
            profiles.c.canonical_id == profiles.c.profile_id,
            profiles.c.deleted_at_us.is_(None),
        )
        async with self._engine.connect() as c:
            return int((await c.execute(query)).scalar_one())


async def write_computed_values(
    c: AsyncConnection,
    ws: str,
    key: str,
    values: Mapping[int, Any],
    now_us: int,
    scope: Sequence[int] | None = None,
) -> tuple[dict[int, Any], list[int]]:
    """Make `values` the computed trait's values within the caller's transaction,
    writing only what changed; with `scope` (canonical ids) only the rows of those
    profiles and of the profiles merged into them are compared and replaced.
    Returns (changed profile -> new value, profiles whose row was removed)."""
    cv = computed_trait_values
    query = select(cv.c.profile_id, cv.c.value).where(cv.c.workspace_id == ws, cv.c.key == key)
    if scope is not None:
        # The scope's own profile ids as literals: the planner then probes the primary
        # key per profile, where a subquery made it scan the key's every row (the
        # realtime worker's batches grew slower with the workspace).
        own = select(profiles.c.profile_id).where(
            profiles.c.workspace_id == ws, profiles.c.canonical_id.in_(scope)
        )
        owned = [r.profile_id for r in await c.execute(own)]
        query = query.where(cv.c.profile_id.in_(owned))
    old = {r.profile_id: orjson.dumps(r.value) for r in await c.execute(query)}
    changed = {p: v for p, v in values.items() if old.get(p) != orjson.dumps(v)}
    removed = sorted(old.keys() - values.keys())
    doomed = sorted(set(removed) | (changed.keys() & old.keys()))
    for chunk in _chunks(doomed):
        await c.execute(
            delete(cv).where(cv.c.workspace_id == ws, cv.c.key == key, cv.c.profile_id.in_(chunk))
        )
    new_rows = [
        {
            "workspace_id": ws,
            "profile_id": p,
            "key": key,
            "value": _json_or_null(v),
            "computed_at_us": now_us,
        }
        for p, v in changed.items()
    ]
    for chunk in _chunks(new_rows):
        await c.execute(insert(cv), chunk)
    return changed, removed


def change_from_row(row: Any, key: str) -> Change:
    """A `Change` from a ``membership_changes`` row (all its columns selected), under
    the audience key `key` (the caller joins or looks it up)."""
    kept = row.identifiers
    return Change(
        seq=row.seq,
        audience_id=row.audience_id,
        audience_key=key,
        profile_id=row.profile_id,
        kind=row.kind,
        at_us=row.at_us,
        version=row.version,
        identifiers=None if kept is None else tuple((t, v) for t, v in kept),
    )


async def rollup_pairs(
    c: AsyncConnection,
    audience_ids: Sequence[int],
    query: sa.Select[Any],
    params: Mapping[str, Any] | None = None,
) -> tuple[sa.Table, sa.CompoundSelect[Any]]:
    """Run a ``sql.compile_audiences`` query (with `params`: a ``sql.Prepared``
    statement's) into a temporary table (``seg_rollup``: pid, a0..) and return it with
    its flag columns as (``aud``, ``pid``) member rows for ``MembershipWriter.apply``.
    The caller drops the table."""
    flags = [sa.Column(f"a{i}", sa.Boolean) for i in range(len(audience_ids))]
    rollup = await _temp_table(c, "seg_rollup", sa.Column("pid", sa.BigInteger), *flags)
    await c.execute(insert(rollup).from_select(list(rollup.c), query), params)
    await _analyze(c, rollup)
    pairs = sa.union_all(
        *[
            select(sa.literal(a, sa.BigInteger).label("aud"), rollup.c.pid).where(rollup.c[f"a{i}"])
            for i, a in enumerate(audience_ids)
        ]
    )
    return rollup, pairs


async def _temp_table(c: AsyncConnection, name: str, *columns: sa.Column[Any]) -> sa.Table:
    """A new, empty temporary table of this connection (a leftover of a failed call on
    a pooled connection is dropped first)."""
    table = sa.Table(name, sa.MetaData(), *columns, prefixes=["TEMPORARY"])
    await c.run_sync(lambda sync: table.drop(sync, checkfirst=True))
    await c.run_sync(lambda sync: table.create(sync))
    return table


async def drop_temp_table(c: AsyncConnection, table: sa.Table) -> None:
    """Drop a temporary table made by this module's writers (``rollup_pairs``'s rollup,
    ``MembershipWriter``'s own) before the transaction commits."""
    await c.run_sync(lambda sync: table.drop(sync))


async def _analyze(c: AsyncConnection, table: sa.Table) -> None:
    # Temporary tables get no statistics from autovacuum; without them the planner
    # guesses their size and may pick nested loops over a million rows.
    if c.dialect.name == "postgresql":
        await c.execute(sa.text(f"ANALYZE {table.name}"))


class MembershipWriter:
    """Set-based membership writes of one workspace inside one transaction, for a batch
    of audiences at once: the new (audience, member) pairs (a SELECT of canonical ids)
    vs the stored rows -> one table of differences (``seg_diff``) for the whole batch,
    which then drives the change-log insert (gapless seqs), the membership deletes and
    inserts: one full join and three INSERT/DELETE statements per batch, whatever its
    size (they were per audience: ten audiences made each fixed cost ten times).

    Stored rows may sit on profiles merged away since they entered; those are mapped to
    the survivor through ``seg_merged`` (the workspace's merged profiles: few, read
    once) instead of joining every membership row to ``profiles``.
    """

    def __init__(
        self, c: AsyncConnection, ws: str, now_us: int, merged: sa.Table, diff: sa.Table
    ) -> None:
        self._c = c
        self._ws = ws
        self._now = now_us
        self._merged = merged
        self._diff = diff
        self._any_merged = False
        self._scope: list[int] | None = None

    @classmethod
    async def start(
        cls, c: AsyncConnection, ws: str, now_us: int, scope: Sequence[int] | None = None
    ) -> MembershipWriter:
        """Take the workspace's change-seq lock and read its merged profiles.

        With `scope` (canonical ids: the realtime worker's profiles) the writer compares
        and writes only those profiles' rows (see `apply`), so it reads only their
        merged profiles."""
        await lock_change_sequence(c, ws)
        merged = await _temp_table(
            c, "seg_merged", sa.Column("own", sa.BigInteger), sa.Column("pid", sa.BigInteger)
        )
        merges = select(profiles.c.profile_id, profiles.c.canonical_id).where(
            profiles.c.workspace_id == ws, sql.merged_away(profiles)
        )
        if scope is not None:
            merges = merges.where(profiles.c.canonical_id.in_(scope))
        found = await c.execute(insert(merged).from_select(["own", "pid"], merges))
        diff = await _temp_table(
            c,
            "seg_diff",
            sa.Column("aud", sa.BigInteger),
            sa.Column("pid", sa.BigInteger),
            sa.Column("entered", sa.Boolean),
        )
        writer = cls(c, ws, now_us, merged, diff)
        writer._scope = None if scope is None else list(scope)
        writer._any_merged = found.rowcount > 0
        if writer._any_merged:
            await _analyze(c, merged)
        return writer

    async def finish(self) -> None:
        """Drop the writer's temporary tables (before commit)."""
        await drop_temp_table(self._c, self._merged)
        await drop_temp_table(self._c, self._diff)

    async def apply(
        self,
        batch: Sequence[tuple[int, int]],
        members: sa.Select[Any] | sa.CompoundSelect[Any],
        progress: Progress,
        sizes: Sequence[int] | None,
    ) -> list[Diff]:
        """Make `members` (rows of audience id ``aud`` and canonical id ``pid``) the
        members of the audiences of `batch` ((audience id, version) pairs, whose sizes
        are `sizes`); returns each audience's differences, in batch order.

        A writer started with a scope compares and writes only those profiles' rows
        (`members` holds only theirs) and only updates the audiences' sizes (counted;
        `sizes` is None).

        Change seqs follow the batch order, then exits before entries, then profile id.
        """
        c, m, mg, d = self._c, memberships, self._merged, self._diff
        scope = self._scope
        ids = [a for a, _ in batch]
        new = members.subquery("new")
        scoped = [] if scope is None else [m.c.profile_id.in_(scope)]
        stored: sa.Select[Any] = select(
            m.c.audience_id.label("aud"), m.c.profile_id.label("pid")
        ).where(m.c.audience_id.in_(ids), *scoped)
        if self._any_merged:
            canonical = func.coalesce(mg.c.pid, m.c.profile_id)
            scoped = [] if scope is None else [canonical.in_(scope)]
            stored = (
                select(m.c.audience_id.label("aud"), canonical.label("pid"))
                .select_from(m.outerjoin(mg, mg.c.own == m.c.profile_id))
                .where(m.c.audience_id.in_(ids), *scoped)
            )
            # Two stored rows may now be one person: one exit, not two.
            stored = stored.group_by(*stored.selected_columns)
        cur = stored.subquery("cur")
        # One full join finds both sides' differences (one hash table, not two).
        both = new.outerjoin(cur, and_(cur.c.aud == new.c.aud, cur.c.pid == new.c.pid), full=True)
        differences = (
            select(
                func.coalesce(new.c.aud, cur.c.aud),
                func.coalesce(new.c.pid, cur.c.pid),
                new.c.pid.is_not(None),
            )
            .select_from(both)
            .where(sa.or_(new.c.pid.is_(None), cur.c.pid.is_(None)))
        )
        # A scoped write changes only its profiles' rows: their count before and after
        # moves each size, instead of counting every member of the audience per write
        # (the realtime worker's batches grew slower with each audience's size).
        before = await self._scope_counts(ids) if sizes is None else {}
        with phase("diff"):
            await c.execute(d.delete())
            columns = ["aud", "pid", "entered"]
            n = (await c.execute(insert(d).from_select(columns, differences))).rowcount
            if n:
                await _analyze(c, d)
        if n:
            with phase("change log"):
                await self._log(batch, n)
        moved: dict[int, tuple[tuple[tuple[int, int], ...], tuple[int, ...]]] = {}
        if self._any_merged:
            with phase("memberships"):
                for audience_id in ids:
                    moved[audience_id] = await self._rekey(audience_id, new)
        if n:
            with phase("memberships"):
                await self._write_rows()
        came: dict[int, list[int]] = {a: [] for a in ids}
        left: dict[int, list[int]] = {a: [] for a in ids}
        if n:
            with phase("fetch diff"):
                for aud, was_entered, pids in await self._diff_lists():
                    (came if was_entered else left)[aud] = pids
        if sizes is None:
            return await self._shift_sizes(batch, came, left, before)
        diffs = []
        with phase("status"):
            for (audience_id, version), size in zip(batch, sizes, strict=True):
                await c.execute(
                    update(audience_status)
                    .where(audience_status.c.audience_id == audience_id)
                    .values(
                        live_version=version,
                        size=size,
                        state=LIVE,
                        failure_reason="",
                        progress_done=progress.done,
                        progress_total=progress.total,
                        progress_stage=progress.stage,
                    )
                )
                survivors, absorbed = moved.get(audience_id, ((), ()))
                diffs.append(
                    Diff(
                        tuple(came[audience_id]),
                        tuple(left[audience_id]),
                        int(size),
                        survivors,
                        absorbed,
                    )
                )
        return diffs

    async def _scope_counts(self, ids: Sequence[int]) -> dict[int, int]:
        """Audience -> how many of its rows sit on the scope's profiles (canonical ids
        and the profiles merged into them)."""
        m, mg = memberships, self._merged
        mine: sa.ColumnElement[bool] = m.c.profile_id.in_(self._scope or [])
        if self._any_merged:
            mine = sa.or_(mine, m.c.profile_id.in_(select(mg.c.own)))
        query = (
            select(m.c.audience_id, func.count())
            .where(m.c.audience_id.in_(list(ids)), mine)
            .group_by(m.c.audience_id)
        )
        return {int(a): int(n) for a, n in await self._c.execute(query)}

    async def _shift_sizes(
        self,
        batch: Sequence[tuple[int, int]],
        came: Mapping[int, list[int]],
        left: Mapping[int, list[int]],
        before: Mapping[int, int],
    ) -> list[Diff]:
        """Each audience's size moved by how its rows on the scope's profiles changed
        (every writer of the workspace holds its lock, so the stored size is exact),
        stored in its status; the differences in batch order."""
        ids = [a for a, _ in batch]
        after = await self._scope_counts(ids)
        status = audience_status
        for audience_id in ids:
            delta = after.get(audience_id, 0) - before.get(audience_id, 0)
            if delta:
                await self._c.execute(
                    update(status)
                    .where(status.c.audience_id == audience_id)
                    .values(size=status.c.size + delta)
                )
        query = select(status.c.audience_id, status.c.size).where(status.c.audience_id.in_(ids))
        sizes = {int(a): int(n) for a, n in await self._c.execute(query)}
        return [Diff(tuple(came[a]), tuple(left[a]), sizes[a]) for a in ids]

    async def _diff_lists(self) -> list[tuple[int, bool, list[int]]]:
        """(audience, entered, sorted profile ids) per group of ``seg_diff``: a list per
        group instead of a row per change (row by row, fetching 650k changes through
        the driver and SQLAlchemy cost ~3 us each)."""
        d = self._diff
        if self._c.dialect.name == "postgresql":
            ids: Any = func.array_agg(d.c.pid)
        else:
            ids = func.group_concat(d.c.pid)
        query = select(d.c.aud, d.c.entered, ids).group_by(d.c.aud, d.c.entered)
        out = []
        for aud, entered, pids in await self._c.execute(query):
            if isinstance(pids, str):
                pids = [int(p) for p in pids.split(",")]
            out.append((aud, bool(entered), sorted(pids)))
        return out

    async def _log(self, batch: Sequence[tuple[int, int]], n: int) -> None:
        """One change record per row of ``seg_diff``, seqs in batch order."""
        d = self._diff
        first = await take_change_seqs(self._c, self._ws, n)
        position = sa.case({a: i for i, (a, _) in enumerate(batch)}, value=d.c.aud)
        version = sa.case({a: v for a, v in batch}, value=d.c.aud)
        order = func.row_number().over(order_by=[position, d.c.entered, d.c.pid])
        log = select(
            sa.literal(self._ws, sa.String),
            sa.literal(first - 1, sa.BigInteger) + order,
            d.c.aud,
            d.c.pid,
            sa.case((d.c.entered, ENTERED), else_=EXITED),
            sa.literal(self._now, sa.BigInteger),
            sa.cast(version, sa.Integer),
        )
        await self._c.execute(
            insert(membership_changes).from_select(
                ["workspace_id", "seq", "audience_id", "profile_id", "kind", "at_us", "version"],
                log,
            )
        )

    async def _write_rows(self) -> None:
        """Delete the exited rows and insert the entered ones, as listed in seg_diff."""
        c, m, d = self._c, memberships, self._diff
        await c.execute(
            delete(m).where(
                sa.tuple_(m.c.audience_id, m.c.profile_id).in_(
                    select(d.c.aud, d.c.pid).where(~d.c.entered)
                )
            )
        )
        await c.execute(
            insert(m).from_select(
                ["workspace_id", "audience_id", "profile_id", "entered_at_us"],
                select(
                    sa.literal(self._ws, sa.String),
                    d.c.aud,
                    d.c.pid,
                    sa.literal(self._now, sa.BigInteger),
                )
                .where(d.c.entered)
                # In primary-key order: the index pages are then visited in order.
                .order_by(d.c.aud, d.c.pid),
            )
        )

    async def _rekey(
        self, audience_id: int, new: Any
    ) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
        """Rows on merged-away profiles go; a survivor still in the audience keeps one
        row entered at the person's earliest entry (no change record: the person never
        left), which is what ListMembers showed since the merge. Returns those
        survivors with that instant, and the merged-away profiles whose rows went.

        Few rows take this path (those merged since the last write), so they are
        handled in Python rather than set-based."""
        c, m, mg = self._c, memberships, self._merged
        rows = (
            await c.execute(
                select(mg.c.pid, mg.c.own, m.c.entered_at_us)
                .select_from(m.join(mg, mg.c.own == m.c.profile_id))
                .where(m.c.audience_id == audience_id)
            )
        ).all()
        if not rows:
            return (), ()
        earliest: dict[int, int] = {}
        for r in rows:
            earliest[r.pid] = min(earliest.get(r.pid, r.entered_at_us), r.entered_at_us)
        stays: set[int] = set()
        own: dict[int, int] = {}
        for chunk in _chunks(sorted(earliest)):
            stays.update(
                await c.scalars(
                    select(new.c.pid).where(new.c.aud == audience_id, new.c.pid.in_(chunk))
                )
            )
            for r in await c.execute(
                select(m.c.profile_id, m.c.entered_at_us).where(
                    m.c.audience_id == audience_id, m.c.profile_id.in_(chunk)
                )
            ):
                own[r.profile_id] = r.entered_at_us
        moved = {p: min(earliest[p], own.get(p, earliest[p])) for p in sorted(stays)}
        rewrite = sorted(p for p, at in moved.items() if own.get(p) != at)
        await c.execute(
            delete(m).where(m.c.audience_id == audience_id, m.c.profile_id.in_(select(mg.c.own)))
        )
        for chunk in _chunks(rewrite):
            await c.execute(
                delete(m).where(m.c.audience_id == audience_id, m.c.profile_id.in_(chunk))
            )
            await c.execute(
                insert(m),
                [
                    {
                        "workspace_id": self._ws,
                        "audience_id": audience_id,
                        "profile_id": p,
                        "entered_at_us": moved[p],
                    }
                    for p in chunk
                ],
            )
        return tuple(moved.items()), tuple(sorted({r.own for r in rows}))
