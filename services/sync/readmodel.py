"""The read model sync reads segmentation's results through (docs/sync.md, "What sync
reads"): the shared membership tables of services/shared/db/membership_log.py
(``memberships`` and the change log ``membership_changes``, ``seq`` monotonic per
workspace in commit order), the shared ``profiles`` and ``identities``, and these
columns of segmentation's ``audiences``.

Sync only reads; segmentation (and the erasure) write. ``audiences`` belongs to
segmentation, so the columns sync depends on are declared here as a table clause on no
metadata, and sync imports nothing of the segmentation package (docs/decisions.md,
"Sync reads the change log as a read model").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, column, func, select, table
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import NullType

from services.shared.db.membership_log import ENTERED, EXITED, membership_changes, memberships
from services.shared.db.tables import events, identities, profiles

audiences = table(
    "audiences",
    column("audience_id"),
    column("workspace_id"),
    column("key"),
    column("deleted_at_us"),
    column("holdout_share"),
)

STREAM_ROWS = 2_000  # rows fetched per round trip while streaming members
QUEUED = 16  # COPY chunks an export may run ahead of its reader
# Enough to sort a million members' identifiers in memory: a sort spilled to
# temporary files made a 1M export twice as slow. Only the export's transaction.
EXPORT_WORK_MEM = "256MB"


@dataclass(frozen=True)
class LoggedChange:
    """One change-log record, named by the person (canonical profile) and, when the
    person has one, the value of the requested id type."""

    seq: int
    entered: bool
    person: int
    id_value: str | None
    at_us: int


class ChangeLog:
    """Reads audiences' members and changes from segmentation's tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> AsyncEngine:
        """The database it reads."""
        return self._engine

    async def audience_id(self, ws: str, key: str) -> int | None:
        """The id of the workspace's live (not deleted) audience `key`, or None."""
        async with self._engine.connect() as c:
            found = (
                await c.execute(
                    select(audiences.c.audience_id).where(
                        audiences.c.workspace_id == ws,
                        audiences.c.key == key,
                        audiences.c.deleted_at_us.is_(None),
                    )
                )
            ).scalar()
        return int(found) if found is not None else None

    async def holdout_share(self, ws: str, audience_id: int) -> float:
        """The share of the audience's members held out as control (0: none)."""
        async with self._engine.connect() as c:
            found = (
                await c.execute(
                    select(audiences.c.holdout_share).where(
                        audiences.c.workspace_id == ws, audiences.c.audience_id == audience_id
                    )
                )
            ).scalar()
        return float(found or 0.0)

    async def last_seq(self, ws: str) -> int:
        """The workspace's newest change seq (0 before the first change)."""
        async with self._engine.connect() as c:
            return await _last_seq(c, ws)

    async def last_change(self, ws: str, audience_id: int) -> int:
        """The seq of the audience's newest change (0 before its first): a realtime
        sync whose cursor is below it has something to deliver."""
        async with self._engine.connect() as c:
            found = await c.execute(
                select(func.max(membership_changes.c.seq)).where(
                    membership_changes.c.workspace_id == ws,
                    membership_changes.c.audience_id == audience_id,
                )
            )
            return int(found.scalar() or 0)

    async def name_profiles(
        self, ws: str, pids: Sequence[int], id_type: str, audience_id: int | None
    ) -> tuple[dict[int, int], dict[int, str], set[int] | None]:
        """For events of these profiles: profile -> person (canonical, live profiles
        only), person -> their value of `id_type`, and with `audience_id` the persons
        who are members now (None without)."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(profiles.c.profile_id, profiles.c.canonical_id).where(
                    profiles.c.workspace_id == ws,
                    profiles.c.profile_id.in_(sorted(set(pids))),
                    profiles.c.deleted_at_us.is_(None),
                )
            )
            people = {int(r.profile_id): int(r.canonical_id) for r in rows}
            persons = set(people.values())
            values = await _id_values(c, ws, persons, id_type)
            members: set[int] | None = None
            if audience_id is not None:
                found = await c.execute(
                    select(profiles.c.canonical_id)
                    .distinct()
                    .select_from(_members_join(ws, audience_id))
                    .where(
                        *_members_where(ws, audience_id),
                        profiles.c.canonical_id.in_(sorted(persons)),
                    )
                )
                members = {int(r[0]) for r in found}
        return people, values, members

    async def active_persons(self, ws: str, persons: set[int], since_us: int) -> set[int]:
        """Those of the persons (canonical profiles) with an event at or after
        `since_us` on any of their merged profiles."""
        async with self._engine.connect() as c:
            return await active(c, ws, persons, since_us)

    async def count_exits(self, ws: str, audience_id: int, after: int, upto: int) -> int:
        """Exits of the audience in (after, upto]: what a run would remove."""
        async with self._engine.connect() as c:
            found = await c.execute(
                select(func.count()).where(
                    membership_changes.c.workspace_id == ws,
                    membership_changes.c.audience_id == audience_id,
                    membership_changes.c.seq > after,
                    membership_changes.c.seq <= upto,
                    membership_changes.c.kind == EXITED,
                )
            )
            return int(found.scalar_one())

    async def exiting_persons(self, ws: str, audience_id: int, after: int, upto: int) -> list[int]:
        """The persons (canonical profiles) of the audience's exits in (after, upto]."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(membership_changes.c.profile_id).where(
                    membership_changes.c.workspace_id == ws,
                    membership_changes.c.audience_id == audience_id,
                    membership_changes.c.seq > after,
                    membership_changes.c.seq <= upto,
                    membership_changes.c.kind == EXITED,
                )
            )
            pids = [int(r[0]) for r in rows]
            people = await _people(c, ws, pids)
        return [people.get(p, p) for p in pids]

    async def changes(
        self, ws: str, audience_id: int, id_type: str, after: int, upto: int, limit: int
    ) -> list[LoggedChange]:
        """The audience's changes in (after, upto], in seq order, at most `limit`."""
        async with self._engine.connect() as c:
            rows = list(
                await c.execute(
                    select(membership_changes)
                    .where(
                        membership_changes.c.workspace_id == ws,
                        membership_changes.c.audience_id == audience_id,
                        membership_changes.c.seq > after,
                        membership_changes.c.seq <= upto,
                    )
                    .order_by(membership_changes.c.seq)
                    .limit(limit)
                )
            )
            people = await _people(c, ws, [r.profile_id for r in rows])
            values = await _id_values(c, ws, set(people.values()), id_type)
        return [
            LoggedChange(
                seq=r.seq,
                entered=r.kind == ENTERED,
                person=people.get(r.profile_id, r.profile_id),
                id_value=_logged_id(r.identifiers, id_type)
                or values.get(people.get(r.profile_id, r.profile_id)),
                at_us=r.at_us,
            )
            for r in rows
        ]

    @asynccontextmanager
    async def member_snapshot(
        self, ws: str, audience_id: int, id_type: str
    ) -> AsyncIterator[tuple[int, AsyncIterator[tuple[int, str | None]]]]:
        """The workspace's last seq and the audience's members at that same instant
        (one repeatable-read snapshot), as (person, value of id_type or None), streamed."""
        async with self._engine.connect() as c:
            if c.dialect.name == "postgresql":
                await c.execution_options(isolation_level="REPEATABLE READ")
            async with c.begin():
                last = await _last_seq(c, ws)
                yield last, _members(c, ws, audience_id, id_type)

    async def member_count(self, ws: str, audience_id: int) -> int:
        """How many people (canonical profiles) are members."""
        async with self._engine.connect() as c:
            found = await c.execute(
                select(func.count(func.distinct(profiles.c.canonical_id)))
                .select_from(_members_join(ws, audience_id))
                .where(*_members_where(ws, audience_id))
            )
            return int(found.scalar_one())

    async def id_type_widths(self, ws: str, audience_id: int) -> dict[str, int]:
        """For each id type members have: the most values one member has of it."""
        # The members once each, then their identifiers: an identity belongs to one
        # profile, so counting rows counts distinct values (no DISTINCT to sort).
        people = (
            select(profiles.c.canonical_id.label("person"))
            .select_from(_members_join(ws, audience_id))
            .where(*_members_where(ws, audience_id))
            .distinct()
            .subquery()
        )
        q = profiles.alias("q")
        per_person = (
            select(people.c.person, identities.c.id_type, func.count().label("n"))
            .select_from(
                people.join(
                    q, and_(q.c.canonical_id == people.c.person, q.c.workspace_id == ws)
                ).join(
                    identities,
                    and_(
                        identities.c.profile_id == q.c.profile_id, identities.c.workspace_id == ws
                    ),
                )
            )
            .group_by(people.c.person, identities.c.id_type)
            .subquery()
        )
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(per_person.c.id_type, func.max(per_person.c.n)).group_by(
                    per_person.c.id_type
                )
            )
            return {r[0]: int(r[1]) for r in rows}

    @asynccontextmanager
    async def export_lines(
        self, ws: str, audience_id: int, fmt: str, id_type: str
    ) -> AsyncIterator[tuple[dict[str, int], AsyncIterator[bytes]] | None]:
        """Postgres only (None elsewhere): the id type widths (formatted exports) and the
        bytes of ``COPY (export_query) TO STDOUT`` as asyncpg hands them over (whole
        lines), both from one repeatable-read snapshot, with back-pressure: the copy
        waits while the consumer is `QUEUED` chunks behind."""
        async with self._engine.connect() as c:
            if c.dialect.name != "postgresql":
                yield None
                return
            raw = (await c.get_raw_connection()).driver_connection
            assert raw is not None
            transaction = raw.transaction(isolation="repeatable_read", readonly=True)
            await transaction.start()
            try:
                # Room to sort in memory, not in temporary files.
                await raw.execute(f"SET LOCAL work_mem = '{EXPORT_WORK_MEM}'")
                widths: dict[str, int] = {}
                if fmt == "formatted":
                    await raw.execute("SET LOCAL enable_hashagg = off")
                    rows = await raw.fetch(widths_query(), ws, audience_id)
                    widths = {r[0]: int(r[1]) for r in rows}
                    await raw.execute("SET LOCAL enable_hashagg = on")
                query, extra, copy_format = export_query(fmt, widths, id_type)
                queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUED)

                async def sink(data: bytes) -> None:
                    await queue.put(data)

                async def copy() -> None:
                    try:
                        await raw.copy_from_query(
                            query, ws, audience_id, *extra, output=sink, format=copy_format
                        )
                    finally:
                        await queue.put(None)

                task = asyncio.create_task(copy())

                async def lines() -> AsyncIterator[bytes]:
                    while (data := await queue.get()) is not None:
                        yield data
                    await task  # raises what the copy raised

                try:
                    yield widths, lines()
                finally:
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            finally:
                await transaction.rollback()  # read only: nothing to keep

    async def member_identifiers(
        self, ws: str, audience_id: int
    ) -> AsyncIterator[tuple[int, list[tuple[str, str]]]]:
        """Each member (ascending) with every identifier of the person, streamed from
        a server-side cursor, so memory stays constant whatever the audience's size."""
        q = profiles.alias("q")
        query = (
            select(profiles.c.canonical_id, identities.c.id_type, identities.c.id_value)
            .select_from(
                _members_join(ws, audience_id)
                .outerjoin(
                    q, and_(q.c.canonical_id == profiles.c.canonical_id, q.c.workspace_id == ws)
                )
                .outerjoin(
                    identities,
                    and_(
                        identities.c.profile_id == q.c.profile_id, identities.c.workspace_id == ws
                    ),
                )
            )
            .where(*_members_where(ws, audience_id))
            .order_by(profiles.c.canonical_id, identities.c.id_type, identities.c.id_value)
        )
        async with self._engine.connect() as c:
            if c.dialect.name == "postgresql":
                async for member in _aggregated(c, query):
                    yield member
                return
            result = await c.stream(query.execution_options(yield_per=STREAM_ROWS))
            person: int | None = None
            found: list[tuple[str, str]] = []
            # A partition at a time: iterating an async result row by row costs a
            # greenlet switch per row, most of an export's time.
            async for partition in result.partitions():
                for r in partition:
                    if r.canonical_id != person:
                        if person is not None:
                            yield person, found
                        person, found = r.canonical_id, []
                    pair = (r.id_type, r.id_value)
                    # A person with two membership rows (one merged away) repeats its rows.
                    if r.id_type is not None and pair not in found:
                        found.append(pair)
            if person is not None:
                yield person, found


def widths_query() -> str:
    """The SQL of `id_type_widths` over `_MEMBERS` (id type, most values of a member),
    counted over the rows in (person, type) order: run with hash aggregation off, as
    hashing a million members' (person, type) groups took twice as long as sorting."""
    return (
        "SELECT t, max(n) FROM (SELECT person, t, count(*) AS n FROM ("
        + _MEMBERS.format(only="")
        + ' ORDER BY d.person, i.id_type COLLATE "C"'
        + ") x WHERE t IS NOT NULL GROUP BY person, t) y GROUP BY t"
    )


# The members (people, once each: merged profiles can hold a membership row each),
# then every identifier of theirs: one person per identity (the identities' key), so
# no pair repeats and no DISTINCT sort is needed. $1 workspace, $2 audience.
_MEMBERS = (
    "SELECT d.person, i.id_type AS t, i.id_value AS v FROM ("
    "SELECT DISTINCT p.canonical_id AS person FROM memberships m"
    " JOIN profiles p ON p.profile_id = m.profile_id"
    " WHERE m.audience_id = $2 AND p.workspace_id = $1 AND p.deleted_at_us IS NULL) d"
    " LEFT JOIN profiles q ON q.canonical_id = d.person AND q.workspace_id = $1"
    " LEFT JOIN identities i ON i.profile_id = q.profile_id AND i.workspace_id = $1{only}"
)


def export_query(fmt: str, widths: dict[str, int], id_type: str) -> tuple[str, list[Any], str]:
    """The SQL of an export's CSV rows, one per member in id order, its parameters
    after $1 workspace and $2 audience, and the COPY format to read it in.

    Postgres formats the rows (CSV quoting, the JSON of the unformatted format, the
    SHA-256 of the single-column one), so the sync process only frames bytes:
    - formatted: COPY's CSV format, one column per cell (NULL: an empty cell);
    - unformatted: one text column holding the whole CSV line (the JSON cell always
      quoted), read in COPY's text format, which escapes a newline inside a value as
      ``\\n``, so every real newline ends one member's line;
    - single column: a text line per member holding its hashed values joined by
      escaped newlines (one CSV row each), NULL (``\\N``) for a member without one."""
    members = _MEMBERS
    # One sort of every (person, type, value) row feeds the grouping in order, and the
    # aggregates keep their input's order (Postgres documents this for a sorted
    # subquery): an ORDER BY inside each aggregate would sort every group apart,
    # a sort per member. Byte order ("C"): the code point order Python sorts in, the
    # same whatever the database's collation, and about twice as fast to sort.
    sorted_ = ' ORDER BY d.person, i.id_type COLLATE "C", i.id_value COLLATE "C"'
    if fmt == "single_column":
        query = (
            "SELECT string_agg(encode(sha256(convert_to(v, 'UTF8')), 'hex'), E'\\n')"
            " FROM (" + members.format(only=" AND i.id_type = $3") + sorted_ + ") x"
            " GROUP BY person ORDER BY person"
        )
        return query, [id_type], "text"
    if fmt == "unformatted":
        item = "'{\"type\":' || to_json(t)::text || ',\"id\":' || to_json(v)::text || '}'"
        ids = f"'[' || coalesce(string_agg({item}, ','), '') || ']'"
        query = (
            f"SELECT person::text || ',\"' || replace({ids}, '\"', '\"\"') || '\"'"
            " FROM (" + members.format(only="") + sorted_ + ") x GROUP BY person ORDER BY person"
        )
        return query, [], "text"
    types = sorted(widths)
    arrays = "".join(
        f", array_agg(v) FILTER (WHERE t = ${n + 3}) AS a{n}" for n in range(len(types))
    )
    cells = ["person"] + [f"a{n}[{i + 1}]" for n, t in enumerate(types) for i in range(widths[t])]
    query = (
        f"SELECT {', '.join(cells)} FROM (SELECT person{arrays}"
        " FROM (" + members.format(only="") + sorted_ + ") x GROUP BY person) g ORDER BY person"
    )
    return query, types, "csv"


async def _aggregated(
    c: AsyncConnection, rows: Any
) -> AsyncIterator[tuple[int, list[tuple[str, str]]]]:
    """Postgres: one row per member, its identifiers gathered by the server (distinct,
    in type and value order): a third of the rows, and no grouping in Python."""
    inner = rows.order_by(None).distinct().subquery()
    ordered = (inner.c.id_type, inner.c.id_value)
    query = (
        select(
            inner.c.canonical_id,
            # Untyped: asyncpg already returns lists; SQLAlchemy's ARRAY result
            # processing would walk every element again.
            func.array_agg(aggregate_order_by(inner.c.id_type, *ordered), type_=NullType()),
            func.array_agg(aggregate_order_by(inner.c.id_value, *ordered), type_=NullType()),
        )
        .group_by(inner.c.canonical_id)
        .order_by(inner.c.canonical_id)
    )
    result = await c.stream(query.execution_options(yield_per=STREAM_ROWS))
    async for partition in result.partitions():
        for person, types, values in partition:
            yield person, [(t, v) for t, v in zip(types, values, strict=True) if t is not None]


def _members_join(ws: str, audience_id: int) -> Any:
    return memberships.join(profiles, profiles.c.profile_id == memberships.c.profile_id)


def _members_where(ws: str, audience_id: int) -> list[Any]:
    return [
        memberships.c.audience_id == audience_id,
        profiles.c.workspace_id == ws,
        profiles.c.deleted_at_us.is_(None),
    ]


async def _members(
    c: AsyncConnection, ws: str, audience_id: int, id_type: str
) -> AsyncIterator[tuple[int, str | None]]:
    q = profiles.alias("q")
    query = (
        select(profiles.c.canonical_id, identities.c.id_value)
        .select_from(
            _members_join(ws, audience_id)
            .outerjoin(q, and_(q.c.canonical_id == profiles.c.canonical_id, q.c.workspace_id == ws))
            .outerjoin(
                identities,
                and_(
                    identities.c.profile_id == q.c.profile_id,
                    identities.c.workspace_id == ws,
                    identities.c.id_type == id_type,
                ),
            )
        )
        .where(*_members_where(ws, audience_id))
        # The person's earliest identifier of the type names them (stable across runs).
        .order_by(profiles.c.canonical_id, identities.c.first_seen_us, identities.c.id_value)
    )
    result = await c.stream(query.execution_options(yield_per=STREAM_ROWS))
    person: int | None = None
    value: str | None = None
    async for partition in result.partitions():
        for r in partition:
            if r.canonical_id != person:
                if person is not None:
                    yield person, value
                person, value = r.canonical_id, r.id_value
            elif value is None:
                value = r.id_value
    if person is not None:
        yield person, value


async def _last_seq(c: AsyncConnection, ws: str) -> int:
    found = await c.execute(
        select(func.max(membership_changes.c.seq)).where(membership_changes.c.workspace_id == ws)
    )
    return int(found.scalar() or 0)


async def _people(c: AsyncConnection, ws: str, pids: Sequence[int]) -> dict[int, int]:
    """profile id -> the person (canonical id) it belongs to now."""
    if not pids:
        return {}
    rows = await c.execute(
        select(profiles.c.profile_id, profiles.c.canonical_id).where(
            profiles.c.workspace_id == ws, profiles.c.profile_id.in_(sorted(set(pids)))
        )
    )
    return {r.profile_id: r.canonical_id for r in rows}


async def _id_values(c: AsyncConnection, ws: str, people: set[int], id_type: str) -> dict[int, str]:
    """person -> their earliest identifier of `id_type` (over every merged profile)."""
    if not people:
        return {}
    rows = await c.execute(
        select(profiles.c.canonical_id, identities.c.id_value)
        .select_from(identities.join(profiles, profiles.c.profile_id == identities.c.profile_id))
        .where(
            identities.c.workspace_id == ws,
            identities.c.id_type == id_type,
            # With the workspace, ix_profiles_workspace_canonical finds the people's
            # profiles; without it the planner scans every identity of the type.
            profiles.c.workspace_id == ws,
            profiles.c.canonical_id.in_(sorted(people)),
        )
        .order_by(
            profiles.c.canonical_id, identities.c.first_seen_us.desc(), identities.c.id_value.desc()
        )
    )
    # Ordered newest first, so the last assignment per person is the earliest.
    return {r.canonical_id: r.id_value for r in rows}


async def active(c: AsyncConnection, ws: str, persons: set[int], since_us: int) -> set[int]:
    """The "active in the last N days" filter of every sync source: those of the persons
    (canonical profiles) with an event timestamped at or after `since_us` on any of
    their merged profiles."""
    if not persons:
        return set()
    found = await c.execute(
        select(profiles.c.canonical_id)
        .distinct()
        .select_from(events.join(profiles, profiles.c.profile_id == events.c.profile_id))
        .where(
            events.c.workspace_id == ws,
            profiles.c.workspace_id == ws,
            profiles.c.canonical_id.in_(sorted(persons)),
            events.c.timestamp_us >= since_us,
        )
    )
    return {int(r[0]) for r in found}


def _logged_id(identifiers: Any, id_type: str) -> str | None:
    """The value of `id_type` an erasure recorded on its exit, if any."""
    for pair in identifiers or ():
        if pair[0] == id_type:
            return str(pair[1])
    return None
