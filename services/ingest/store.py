"""Persistence of the ingest service: events, the identity graph, traits and merges.

A write session holds the write locks of the stream shards it writes (Postgres session
advisory locks, taken in ascending shard order; an asyncio lock on the single-process
SQLite embedding, which has one shard) from before sequence numbers are drawn until the
hot state and streams are updated, so on every shard sequence order equals commit
order (docs/ingest.md, "Shards"). On Postgres events go in with one COPY per batch;
every other table gets one multi-row statement per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from opentelemetry import trace
from sqlalchemy import (
    BigInteger,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    insert,
    null,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from services.ingest.identity import IdentityRecord, IdentityRow
from services.ingest.ingestor import (
    HotProfile,
    StoredEvent,
    StreamRecord,
    WritePlan,
    WriteResult,
    stream_event,
)
from services.ingest.tables import STREAM_CURSOR, event_ids, ingest_cursor
from services.ingest.traits import TraitRow
from services.shared import telemetry
from services.shared.db.engine import dialect_insert, is_postgres
from services.shared.db.tables import (
    events,
    identities,
    merges,
    profile_traits,
    profiles,
    suppressions,
    workspaces,
)
from services.shared.streams import shard_of_profile

_tracer = trace.get_tracer(__name__)


def _copy_span(rows: int) -> contextlib.AbstractContextManager[object]:
    """The span of the events COPY; nothing at all while tracing is off (even the API's
    no-op span cost ~25 us a group, measured)."""
    if not telemetry.tracing_enabled():
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(
        "INSERT events",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "db.system": "postgresql",
            "db.statement": "COPY events FROM STDIN",
            "db.operation": "INSERT",
            "audiences.rows": rows,
        },
    )


# pg_advisory_lock key of the ingest write lock ("ingest" as a number); shard k's lock
# is WRITE_LOCK_KEY + k (shard 0's is the single-shard deployment's lock).
WRITE_LOCK_KEY = 0x696E67657374


def cursor_name(shard: int, shards: int) -> str:
    """The `ingest_cursor` row of a shard ("events" when there is one shard)."""
    return STREAM_CURSOR if shards == 1 else f"{STREAM_CURSOR}:{shard}"


# Postgres allows 32,767 bind parameters per statement; stay well below.
_ROWS_PER_STATEMENT = 2000
# The events table's columns in COPY order (also the storage probe's, bench/copy_probe.py).
EVENT_COLUMNS = (
    "seq",
    "workspace_id",
    "message_id",
    "type",
    "name",
    "profile_id",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "timestamp_us",
    "received_at_us",
    "properties",
    "traits",
    "context",
)


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def _list(values: Sequence[Any]) -> str:
    """A column of a batch as one JSON array parameter, unpacked in SQL by
    `json_array_elements_text` (`ROWS FROM (...)` zips several). asyncpg encodes a
    Python list for an array parameter element by element, with an abc isinstance
    check each; one JSON text is encoded in C (2,000 rows x 3 columns: 0.2 ms of
    client CPU instead of 2.0, and less server time too)."""
    return orjson.dumps(values).decode()


def _json_rows(*columns: str) -> str:
    """`ROWS FROM` over JSON array parameters $n..., one text column each."""
    return "ROWS FROM (" + ", ".join(f"json_array_elements_text({c}::json)" for c in columns) + ")"


def _in(column: ColumnElement[Any], values: Sequence[Any], postgres: bool) -> ColumnElement[bool]:
    """column IN values; on Postgres one array parameter (`= ANY($1)`) so the statement
    text, and asyncpg's prepared statement, does not change with the number of values."""
    if postgres:
        element = String() if isinstance(column.type, String) else BigInteger()
        return column == any_(bindparam(None, list(values), type_=ARRAY(element)))
    return column.in_(list(values))


def _keys_match(
    type_column: ColumnElement[Any],
    value_column: ColumnElement[Any],
    keys: Sequence[tuple[str, str]],
    postgres: bool,
) -> ColumnElement[bool]:
    """(type, value) IN keys, written per type as `value IN (...)` so the primary key
    index is used with one array per type (a row-value IN list plans as a long OR)."""
    by_type: dict[str, list[str]] = {}
    for id_type, id_value in keys:
        by_type.setdefault(id_type, []).append(id_value)
    return or_(
        *[
            and_(type_column == id_type, _in(value_column, values, postgres))
            for id_type, values in sorted(by_type.items())
        ]
    )


def _chunks(rows: Sequence[Any], size: int = _ROWS_PER_STATEMENT) -> list[Sequence[Any]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


class SqlEventStore:
    """The ingest store on Postgres (production) or SQLite (embedded)."""

    def __init__(self, engine: AsyncEngine, shards: int = 1) -> None:
        self._engine = engine
        self._postgres = is_postgres(engine)
        if shards < 1 or (shards > 1 and not self._postgres):
            # The SQLite embedding is one process: one shard is all it can use.
            raise ValueError(f"{shards} ingest shards: Postgres takes >= 1, SQLite only 1")
        self.shards = shards
        self._local_lock = asyncio.Lock()
        self._cursors_ready = shards == 1  # the single shard's row comes with 0002

    async def _ensure_cursors(self, connection: AsyncConnection) -> None:
        """Create the shards' `ingest_cursor` rows (once per process). A new shard's
        cursor starts at the highest seq committed so far: its stream starts empty and
        takes only what is written from now on (resharding: docs/scaling.md)."""
        if self._cursors_ready:
            return
        for shard in range(self.shards):
            await connection.execute(
                text(
                    "INSERT INTO ingest_cursor (stream, last_seq, published_seq)"
                    " SELECT :name, m, m FROM (SELECT COALESCE(max(last_seq), 0) AS m"
                    " FROM ingest_cursor) AS top ON CONFLICT (stream) DO NOTHING"
                ),
                {"name": cursor_name(shard, self.shards)},
            )
        await connection.commit()
        self._cursors_ready = True

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection | None]:
        """A connection for a writer's consecutive holds (`locked(..., connection)`).

        A checkout from the pool costs a liveness ping (BEGIN, SELECT, ROLLBACK: three
        round trips) and SQLAlchemy's checkout and reset: per hold, that was several
        per cent of the process's CPU with 4 shards (a hold per group). A writer that
        has groups waiting takes one connection for all of them. None on SQLite, whose
        holds take a connection with the process's lock.
        """
        if not self._postgres:
            yield None
            return
        async with self._engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def locked(
        self, shards: Sequence[int] = (0,), connection: AsyncConnection | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A connection holding the write locks of `shards` until the block ends: the
        given `connection` (from `connection()`), or one of the pool's.

        The locks are taken in ascending shard order by every writer (and the catch-up
        takes one), so two writers can never each hold a lock the other waits for.
        """
        if not self._postgres:
            async with self._local_lock, self._engine.connect() as own:
                yield own
            return
        if connection is None:
            async with self._engine.connect() as own, self.locked(shards, own) as held:
                yield held
            return
        # One statement takes them all, in the order of its select list (ascending);
        # on the driver connection, outside any transaction: through SQLAlchemy each
        # lock and unlock cost a BEGIN and a COMMIT too, per hold (measured: with 4
        # shards, a hold per group, 6 of a group's ~20 round trips).
        locks = ", ".join(
            f"pg_advisory_lock({WRITE_LOCK_KEY + shard})" for shard in sorted(set(shards))
        )
        await self._ensure_cursors(connection)
        raw: Any = (await connection.get_raw_connection()).driver_connection
        try:
            await raw.execute(f"SELECT {locks}")
            yield connection
        finally:
            if connection.in_transaction():
                await connection.rollback()
            # Every session lock this connection holds (also one granted while a
            # cancelled lock statement was being abandoned): none stays with the
            # connection after the hold (the next hold, or the pool).
            await asyncio.shield(raw.execute("SELECT pg_advisory_unlock_all()"))

    @asynccontextmanager
    async def write_session(
        self,
        workspace_id: str,
        held: AsyncConnection | None = None,
        shards: Sequence[int] = (0,),
    ) -> AsyncIterator[WriteSession]:
        """A locked write transaction; the locks outlive the commit until the block ends.

        With `held` (a connection from `locked(shards)`), the transaction runs on it
        under the locks it already holds, so consecutive sessions pay for them once.
        """
        if held is None:
            async with self.locked(shards) as connection:
                async with self._session(workspace_id, connection, shards) as session:
                    yield session
            return
        async with self._session(workspace_id, held, shards) as session:
            yield session

    @asynccontextmanager
    async def _session(
        self, workspace_id: str, held: AsyncConnection, shards: Sequence[int]
    ) -> AsyncIterator[WriteSession]:
        kind = PgWriteSession if self._postgres else WriteSession
        session = kind(held, workspace_id, self, tuple(sorted(set(shards))))
        try:
            await session.start()
            yield session
        finally:
            # Not committed (an error, or nothing to write): leave the connection clean
            # for the next session of this lock hold.
            if held.in_transaction():
                await held.rollback()

    async def holders(
        self, workspace_id: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """(type, value) -> the profile holding it, read without any lock: the router's
        guess of which shards a group touches, checked again under the locks."""
        if not keys:
            return {}
        async with self._engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            rows = await raw.fetch(  # type: ignore[union-attr]
                f"SELECT k.t, k.v, h.profile_id FROM {_json_rows('$2', '$3')} AS k(t, v)"
                " CROSS JOIN LATERAL (SELECT profile_id FROM identities WHERE"
                " workspace_id = $1 AND id_type = k.t AND id_value = k.v OFFSET 0) h",
                workspace_id,
                _list([k[0] for k in keys]),
                _list([k[1] for k in keys]),
            )
            await connection.rollback()
        return {(row[0], row[1]): row[2] for row in rows}

    async def cursor(
        self, connection: AsyncConnection | None = None, shard: int = 0
    ) -> tuple[int, int]:
        """(last committed seq, last seq known published) of a shard."""
        query = select(ingest_cursor.c.last_seq, ingest_cursor.c.published_seq).where(
            ingest_cursor.c.stream == cursor_name(shard, self.shards)
        )
        if connection is not None:
            row = (await connection.execute(query)).one()
            return int(row[0]), int(row[1])
        async with self._engine.connect() as own:
            # The catch-up loop may ask before any write made the shards' rows.
            await self._ensure_cursors(own)
            row = (await own.execute(query)).one()
        return int(row[0]), int(row[1])

    async def set_published(self, seq: int, shard: int = 0) -> None:
        """Record that the shard's stream holds every entry up to `seq` (only moves
        forward)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                update(ingest_cursor)
                .where(
                    ingest_cursor.c.stream == cursor_name(shard, self.shards),
                    ingest_cursor.c.published_seq < seq,
                )
                .values(published_seq=seq)
            )

    async def records_after(
        self,
        connection: AsyncConnection,
        after_seq: int,
        up_to: int,
        limit: int,
        shard: int = 0,
    ) -> tuple[list[StreamRecord], int]:
        """Stream records of a shard's events (and their merges) with after_seq < seq
        <= up_to: the events attributed to its profiles, and every merge whose survivor
        or merged profile is one of them (a merge across shards is on both streams).

        Returns the records and the last seq they cover.
        """
        count = self.shards
        # Payloads as JSON text, put into the entries as they are: decoding them here
        # would turn an integer beyond 64 bits (which jsonb keeps exactly) into a Python
        # int that orjson cannot encode, and stop the catch-up at that event.
        payloads = ("properties", "traits", "context")
        columns = [
            cast(events.c[name], Text).label(name) if name in payloads else events.c[name]
            for name in EVENT_COLUMNS
        ]
        query = (
            select(*columns)
            .where(events.c.seq > after_seq, events.c.seq <= up_to)
            .order_by(events.c.seq)
            .limit(limit)
        )
        if count > 1:
            query = query.where(events.c.profile_id % count == shard)
        rows = (await connection.execute(query)).all()
        covered = up_to if len(rows) < limit else int(rows[-1].seq)
        records = [
            StreamRecord(
                seq=row.seq,
                sub=0,
                workspace_id=row.workspace_id,
                kind="event",
                profile_id=row.profile_id,
                event=stream_event(row, row.properties, row.traits, row.context),
            )
            for row in rows
        ]
        merge_query = (
            select(merges)
            .where(merges.c.event_seq > after_seq, merges.c.event_seq <= covered)
            .order_by(merges.c.merge_id)
        )
        merge_rows = (await connection.execute(merge_query)).all()
        subs: dict[int, int] = {}
        for row in merge_rows:
            # Numbered over all of the event's merges, as the request path numbers them,
            # then kept if they touch this shard.
            subs[row.event_seq] = subs.get(row.event_seq, 0) + 1
            if count > 1 and shard not in (
                shard_of_profile(row.survivor_id, count),
                shard_of_profile(row.merged_id, count),
            ):
                continue
            records.append(
                StreamRecord(
                    seq=row.event_seq,
                    sub=subs[row.event_seq],
                    workspace_id=row.workspace_id,
                    kind="merge",
                    survivor_id=row.survivor_id,
                    merged_id=row.merged_id,
                )
            )
        records.sort(key=lambda r: (r.seq, r.sub))
        return records, covered

    async def hot_profiles(
        self,
        workspace_id: str,
        profile_ids: Sequence[int] | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[HotProfile]:
        """Full hot state of live canonical profiles, from the store.

        With `profile_ids`, the canonical profiles those ids resolve to; otherwise a page
        of the workspace's profiles with profile_id > after_id.
        """
        live = (
            (profiles.c.workspace_id == workspace_id)
            & (profiles.c.canonical_id == profiles.c.profile_id)
            & profiles.c.deleted_at_us.is_(None)
        )
        async with self._engine.connect() as connection:
            if profile_ids is not None:
                canonical = select(profiles.c.canonical_id).where(
                    profiles.c.workspace_id == workspace_id,
                    profiles.c.profile_id.in_(list(profile_ids)),
                )
                query = select(profiles).where(live, profiles.c.profile_id.in_(canonical))
            else:
                query = (
                    select(profiles)
                    .where(live, profiles.c.profile_id > after_id)
                    .order_by(profiles.c.profile_id)
                    .limit(limit)
                )
            rows = (await connection.execute(query)).all()
            ids = [row.profile_id for row in rows]
            if not ids:
                return []
            found_ids: dict[int, list[str]] = {pid: [] for pid in ids}
            for row in await connection.execute(
                select(identities.c.profile_id, identities.c.id_type, identities.c.id_value).where(
                    identities.c.workspace_id == workspace_id, identities.c.profile_id.in_(ids)
                )
            ):
                found_ids[row.profile_id].append(f"{row.id_type}:{row.id_value}")
            found_traits: dict[int, dict[str, Any]] = {pid: {} for pid in ids}
            for row in await connection.execute(
                select(
                    profile_traits.c.profile_id, profile_traits.c.key, profile_traits.c.value
                ).where(profile_traits.c.profile_id.in_(ids), profile_traits.c.value.is_not(None))
            ):
                if row.value is not None:
                    found_traits[row.profile_id][row.key] = row.value
        return [
            HotProfile(
                profile_id=row.profile_id,
                created_at_us=row.created_at_us,
                last_seen_us=row.last_seen_us,
                ids=sorted(found_ids[row.profile_id]),
                set_traits=found_traits[row.profile_id],
                del_traits=[],
            )
            for row in rows
        ]

    async def redirects(self, workspace_id: str) -> list[tuple[int, int]]:
        """(merged profile, survivor) for every merged-away profile of a workspace."""
        query = select(profiles.c.profile_id, profiles.c.canonical_id).where(
            profiles.c.workspace_id == workspace_id,
            profiles.c.canonical_id != profiles.c.profile_id,
        )
        async with self._engine.connect() as connection:
            return [(row[0], row[1]) for row in await connection.execute(query)]


class WriteSession:
    """The reads and writes of one batch, inside one locked transaction."""

    def __init__(
        self,
        connection: AsyncConnection,
        workspace_id: str,
        store: SqlEventStore,
        shards: tuple[int, ...] = (0,),
    ):
        self._connection = connection
        self._workspace_id = workspace_id
        self._store = store
        self._postgres = store._postgres
        self.shards = shards  # whose locks are held, ascending
        # Per held shard: (last committed seq, last seq known published).
        self.cursors: dict[int, tuple[int, int]] = {}
        self.last_seq = 0  # the highest of the held shards' last committed seqs
        self.published_seq = 0  # shard 0's (one shard: the stream's)
        self.identity_rules: dict[str, Any] | None = None

    async def start(self) -> None:
        """Begin the transaction; read the stream cursor and the workspace's rules."""
        self.last_seq, self.published_seq = await self._store.cursor(self._connection)
        self.cursors = {0: (self.last_seq, self.published_seq)}
        query = select(workspaces.c.identity_rules).where(
            workspaces.c.workspace_id == self._workspace_id
        )
        self.identity_rules = (await self._connection.execute(query)).scalar()

    async def suppressed(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of `keys` are actively suppressed (erased people), in one query."""
        query = select(suppressions.c.id_type, suppressions.c.id_value).where(
            suppressions.c.workspace_id == self._workspace_id,
            suppressions.c.active.is_(True),
            _keys_match(suppressions.c.id_type, suppressions.c.id_value, keys, self._postgres),
        )
        return {(row[0], row[1]) for row in await self._connection.execute(query)}

    async def screen(
        self, keys: Sequence[tuple[str, str]], message_ids: Sequence[str]
    ) -> tuple[set[tuple[str, str]], dict[str, tuple[int, int]]]:
        """`suppressed(keys)` and `known_messages(message_ids)` together."""
        found = await self.suppressed(keys) if keys else set()
        return found, await self.known_messages(message_ids)

    async def known_messages(self, message_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """message_id -> (seq, profile_id) for ids this workspace already accepted."""
        query = select(event_ids.c.message_id, event_ids.c.seq, event_ids.c.profile_id).where(
            event_ids.c.workspace_id == self._workspace_id,
            _in(event_ids.c.message_id, message_ids, self._postgres),
        )
        return {row[0]: (int(row[1]), int(row[2])) for row in await self._connection.execute(query)}

    async def identities(
        self, keys: Sequence[tuple[str, str]], holder_keys: Sequence[tuple[str, str]] = ()
    ) -> list[IdentityRecord]:
        """Every identifier of the live profiles that hold any of `keys`; of those
        holding one of `holder_keys`, at least that key (here: every identifier too)."""
        keys = [*keys, *holder_keys]
        if not keys:
            return []
        holders = list(
            (
                await self._connection.execute(
                    select(identities.c.profile_id)
                    .where(
                        identities.c.workspace_id == self._workspace_id,
                        _keys_match(
                            identities.c.id_type, identities.c.id_value, keys, self._postgres
                        ),
                    )
                    .distinct()
                )
            ).scalars()
        )
        if not holders:
            return []
        query = (
            select(
                identities.c.id_type,
                identities.c.id_value,
                identities.c.profile_id,
                profiles.c.created_at_us,
                profiles.c.last_seen_us,
            )
            .join(profiles, profiles.c.profile_id == identities.c.profile_id)
            .where(
                identities.c.workspace_id == self._workspace_id,
                _in(identities.c.profile_id, holders, self._postgres),
                profiles.c.deleted_at_us.is_(None),
                profiles.c.canonical_id == profiles.c.profile_id,
            )
        )
        return [IdentityRow(*row) for row in await self._connection.execute(query)]

    async def traits_of(self, profile_ids: Sequence[int]) -> list[TraitRow]:
        """Stored trait rows (tombstones included) of profiles."""
        query = select(
            profile_traits.c.profile_id,
            profile_traits.c.key,
            profile_traits.c.value,
            profile_traits.c.timestamp_us,
            profile_traits.c.seq,
        ).where(_in(profile_traits.c.profile_id, profile_ids, self._postgres))
        return [TraitRow(*row) for row in await self._connection.execute(query)]

    async def allocate_seqs(self, count: int) -> list[int]:
        """`count` increasing event sequence numbers."""
        if self._postgres:
            return await self._nextvals("events_seq_seq", count)
        top = (await self._connection.execute(select(func.max(events.c.seq)))).scalar() or 0
        start = max(int(top), self.last_seq) + 1
        return list(range(start, start + count))

    async def allocate_profiles(self, count: int, shards: Sequence[int] = ()) -> list[int]:
        """`count` increasing new profile ids; with several stream shards, the i-th on
        `shards[i]` (`shard_of_profile` of the id is `shards[i]`).

        Every id is a value of the one sequence, picked by its remainder (the values
        of other remainders are skipped): ids never collide, whatever shard count
        drew them before (a reshard, or a deployment going back to one shard)."""
        if count == 0:
            return []
        if self._postgres:
            if self._store.shards == 1:
                return await self._nextvals("profiles_profile_id_seq", count)
            return await self._profiles_on(shards, [])
        top = (await self._connection.execute(select(func.max(profiles.c.profile_id)))).scalar()
        start = int(top or 0) + 1
        return list(range(start, start + count))

    async def allocate(
        self, seq_count: int, profile_count: int, shards: Sequence[int] = ()
    ) -> tuple[list[int], list[int]]:
        """`allocate_seqs(seq_count)` and `allocate_profiles(profile_count, shards)`."""
        return (
            await self.allocate_seqs(seq_count),
            await self.allocate_profiles(profile_count, shards),
        )

    async def _profiles_on(self, shards: Sequence[int], drawn: list[int]) -> list[int]:
        """New profile ids, the i-th on `shards[i]`, from `drawn` (values of the profile
        sequence already drawn, ascending) and as many more as it takes."""
        n = self._store.shards
        wanted: dict[int, int] = {}
        for shard in shards:
            wanted[shard] = wanted.get(shard, 0) + 1
        found: dict[int, list[int]] = {shard: [] for shard in wanted}
        values = drawn
        while True:
            for value in values:
                bucket = found.get(value % n)
                if bucket is not None and len(bucket) < wanted[value % n]:
                    bucket.append(value)
            short = sum(max(0, need - len(found[s])) for s, need in wanted.items())
            if not short:
                break
            values = await self._nextvals("profiles_profile_id_seq", short * n)
        taken = {shard: iter(values) for shard, values in found.items()}
        return [next(taken[shard]) for shard in shards]

    async def _nextvals(self, sequence: str, count: int) -> list[int]:
        rows = await self._connection.execute(
            text(f"SELECT nextval('{sequence}') FROM generate_series(1, :n) ORDER BY 1"),
            {"n": count},
        )
        return [int(row[0]) for row in rows]

    async def write(self, plan: WritePlan) -> WriteResult:
        """Apply a batch's plan; returns the trait rows that changed and redirects."""
        connection = self._connection
        ws = plan.workspace_id
        if plan.new_profiles:
            await connection.execute(
                insert(profiles),
                [
                    {
                        "profile_id": pid,
                        "workspace_id": ws,
                        "canonical_id": canonical,
                        "created_at_us": plan.now_us,
                        "last_seen_us": plan.last_seen.get(pid),
                        "merged_at_us": plan.now_us if canonical != pid else None,
                        "deleted_at_us": None,
                    }
                    for pid, canonical in plan.new_profiles
                ],
            )
        redirected: dict[int, list[int]] = {}
        for loser, survivor in plan.merged_existing:
            moved = await connection.execute(
                update(profiles)
                .where(profiles.c.workspace_id == ws, profiles.c.canonical_id == loser)
                .values(
                    canonical_id=survivor,
                    merged_at_us=case(
                        (profiles.c.profile_id == loser, plan.now_us),
                        else_=profiles.c.merged_at_us,
                    ),
                )
                .returning(profiles.c.profile_id)
            )
            redirected.setdefault(survivor, []).extend(int(r[0]) for r in moved)
            await connection.execute(
                update(identities)
                .where(identities.c.workspace_id == ws, identities.c.profile_id == loser)
                .values(profile_id=survivor)
            )
        if plan.identity_links:
            statement = dialect_insert(connection, identities)
            statement = statement.on_conflict_do_update(
                index_elements=["workspace_id", "id_type", "id_value"],
                set_={"profile_id": statement.excluded.profile_id},
            )
            await connection.execute(
                statement,
                [
                    {
                        "workspace_id": ws,
                        "id_type": id_type,
                        "id_value": id_value,
                        "profile_id": pid,
                        "first_seen_us": plan.now_us,
                    }
                    for id_type, id_value, pid in plan.identity_links
                ],
            )
        await connection.execute(
            insert(event_ids),
            [
                {
                    "workspace_id": ws,
                    "message_id": s.event.message_id,
                    "seq": s.seq,
                    "profile_id": s.profile_id,
                }
                for s in plan.events
            ],
        )
        await self._insert_events(ws, plan.events)
        if plan.drop_traits_of:
            await connection.execute(
                profile_traits.delete().where(profile_traits.c.profile_id.in_(plan.drop_traits_of))
            )
        changed = await self._upsert_traits(ws, plan.traits)
        created = {p for p, _ in plan.new_profiles}
        touched = [
            {"pid": pid, "seen": seen} for pid, seen in plan.last_seen.items() if pid not in created
        ]
        if touched:
            await connection.execute(
                text(
                    "UPDATE profiles SET last_seen_us = CASE WHEN last_seen_us IS NULL "
                    "OR last_seen_us < :seen THEN :seen ELSE last_seen_us END "
                    "WHERE profile_id = :pid"
                ),
                touched,
            )
        if plan.merges:
            await connection.execute(
                insert(merges),
                [
                    {
                        "workspace_id": ws,
                        "survivor_id": m.survivor_id,
                        "merged_id": m.merged_id,
                        "event_seq": m.event_seq,
                        "reason": m.reason,
                        "merged_at_us": plan.now_us,
                    }
                    for m in plan.merges
                ],
            )
        await connection.execute(
            update(ingest_cursor)
            .where(ingest_cursor.c.stream == STREAM_CURSOR)
            .values(last_seq=plan.last_seq)
        )  # SQLite: one shard
        return WriteResult(changed, redirected)

    async def _insert_events(self, workspace_id: str, stored: list[StoredEvent]) -> None:
        if self._postgres:
            records = [
                (
                    s.seq,
                    workspace_id,
                    e.message_id,
                    e.type,
                    e.name,
                    s.profile_id,
                    e.user_id,
                    e.anonymous_id,
                    e.group_id,
                    e.previous_id,
                    e.timestamp_us,
                    s.received_at_us,
                    # The JSON text validated (as the client sent it), not encoded again;
                    # decoded inline (a helper call each cost more than the decode).
                    None if (p := e.properties_json) is None else p.decode(),
                    None if (t := e.traits_json) is None else t.decode(),
                    None if (c := e.context_json) is None else c.decode(),
                )
                for s in stored
                for e in (s.event,)  # read once per row, not once per column
            ]
            raw = await self._connection.get_raw_connection()
            # A span of its own: COPY goes around SQLAlchemy, so its instrumentation
            # never sees the statement that stores the events (one span per group).
            with _copy_span(len(records)):
                # asyncpg's connection on Postgres (this branch); typed as possibly absent.
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    "events", records=records, columns=EVENT_COLUMNS
                )
            return
        await self._connection.execute(
            insert(events),
            [
                {
                    "seq": s.seq,
                    "workspace_id": workspace_id,
                    "message_id": s.event.message_id,
                    "type": s.event.type,
                    "name": s.event.name,
                    "profile_id": s.profile_id,
                    "user_id": s.event.user_id,
                    "anonymous_id": s.event.anonymous_id,
                    "group_id": s.event.group_id,
                    "previous_id": s.event.previous_id,
                    "timestamp_us": s.event.timestamp_us,
                    "received_at_us": s.received_at_us,
                    "properties": s.event.properties,
                    "traits": s.event.traits,
                    "context": s.event.context,
                }
                for s in stored
            ],
        )

    async def _upsert_traits(self, workspace_id: str, rows: list[TraitRow]) -> list[TraitRow]:
        """Write rows that are newer than what is stored; returns those that won."""
        changed: list[TraitRow] = []
        for chunk in _chunks(rows):
            statement = dialect_insert(self._connection, profile_traits).values(
                [
                    {
                        "profile_id": row.profile_id,
                        "key": row.key,
                        "workspace_id": workspace_id,
                        # SQL NULL, not JSON null: the tombstone of a removed trait.
                        "value": null() if row.value is None else row.value,
                        "timestamp_us": row.timestamp_us,
                        "seq": row.seq,
                    }
                    for row in chunk
                ]
            )
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["profile_id", "key"],
                set_={
                    "value": excluded.value,
                    "timestamp_us": excluded.timestamp_us,
                    "seq": excluded.seq,
                },
                where=tuple_(excluded.timestamp_us, excluded.seq)
                > tuple_(profile_traits.c.timestamp_us, profile_traits.c.seq),
            ).returning(
                profile_traits.c.profile_id,
                profile_traits.c.key,
                profile_traits.c.value,
                profile_traits.c.timestamp_us,
                profile_traits.c.seq,
            )
            changed.extend(TraitRow(*row) for row in await self._connection.execute(statement))
        return changed

    async def commit(self) -> None:
        """Make the batch durable (the acknowledgement follows this)."""
        await self._connection.commit()


class PgWriteSession(WriteSession):
    """The Postgres write session: every read and write of a batch is one statement on
    the asyncpg connection under SQLAlchemy's transaction, with each column of the rows
    passed as one JSON array (`_list`, `_json_rows`) or COPY, so a batch costs a fixed
    number of round trips and no per-row parameter processing in Python."""

    async def start(self) -> None:
        """Begin the transaction; read the cursor and the rules in one statement."""
        # Through SQLAlchemy, not the raw connection: its asyncpg adapter issues BEGIN
        # lazily, before the first statement it runs itself. Statements sent on the raw
        # connection before that would each commit on their own.
        # asyncpg prepares the later statements once per connection; a generic plan
        # cached while the tables were tiny would keep scanning them as they grow.
        # Planning each execution costs well under a millisecond and follows the table
        # sizes. (set_config(..., true) is SET LOCAL, here in the same round trip.)
        count = self._store.shards
        names = {cursor_name(shard, count): shard for shard in self.shards}
        rows = (
            await self._connection.execute(
                text(
                    "SELECT c.stream, c.last_seq, c.published_seq,"
                    " (SELECT identity_rules::text FROM workspaces WHERE workspace_id = :ws),"
                    " set_config('plan_cache_mode', 'force_custom_plan', true)"
                    " FROM ingest_cursor c WHERE c.stream = ANY(:streams)"
                ),
                {"ws": self._workspace_id, "streams": list(names)},
            )
        ).all()
        if len(rows) != len(names):
            raise RuntimeError(f"ingest_cursor lacks rows of shards {sorted(names)}")
        self.cursors = {names[row[0]]: (int(row[1]), int(row[2])) for row in rows}
        self.last_seq = max(last for last, _ in self.cursors.values())
        self.published_seq = self.cursors[self.shards[0]][1]
        self.identity_rules = _loads(rows[0][3])
        raw = await self._connection.get_raw_connection()
        self._raw: Any = raw.driver_connection

    async def suppressed(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of `keys` are actively suppressed (erased people): one probe per key."""
        rows = await self._raw.fetch(
            f"SELECT k.t, k.v FROM {_json_rows('$2', '$3')} AS k(t, v) CROSS JOIN LATERAL"
            " (SELECT 1 FROM suppressions WHERE workspace_id = $1 AND id_type = k.t"
            " AND id_value = k.v AND active OFFSET 0) s",
            self._workspace_id,
            _list([k[0] for k in keys]),
            _list([k[1] for k in keys]),
        )
        return {(row[0], row[1]) for row in rows}

    async def known_messages(self, message_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """message_id -> (seq, profile_id) for ids this workspace already accepted."""
        rows = await self._raw.fetch(
            # One primary-key probe per id (see identities() for why LATERAL/OFFSET 0).
            f"SELECT m.id, e.seq, e.profile_id FROM {_json_rows('$2')} AS m(id)"
            " CROSS JOIN LATERAL (SELECT seq, profile_id FROM event_ids"
            " WHERE workspace_id = $1 AND message_id = m.id OFFSET 0) e",
            self._workspace_id,
            _list(message_ids),
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    async def screen(
        self, keys: Sequence[tuple[str, str]], message_ids: Sequence[str]
    ) -> tuple[set[tuple[str, str]], dict[str, tuple[int, int]]]:
        """`suppressed(keys)` and `known_messages(message_ids)` in one statement (the
        same probes, one round trip instead of two per group)."""
        rows = await self._raw.fetch(
            f"SELECT k.t, k.v, NULL::bigint, NULL::bigint FROM {_json_rows('$2', '$3')}"
            " AS k(t, v) CROSS JOIN LATERAL (SELECT 1 FROM suppressions"
            " WHERE workspace_id = $1 AND id_type = k.t AND id_value = k.v AND active"
            " OFFSET 0) s"
            " UNION ALL"
            f" SELECT NULL, m.id, e.seq, e.profile_id FROM {_json_rows('$4')} AS m(id)"
            " CROSS JOIN LATERAL (SELECT seq, profile_id FROM event_ids"
            " WHERE workspace_id = $1 AND message_id = m.id OFFSET 0) e",
            self._workspace_id,
            _list([k[0] for k in keys]),
            _list([k[1] for k in keys]),
            _list(message_ids),
        )
        suppressed: set[tuple[str, str]] = set()
        known: dict[str, tuple[int, int]] = {}
        for row in rows:
            if row[0] is None:
                known[row[1]] = (row[2], row[3])
            else:
                suppressed.add((row[0], row[1]))
        return suppressed, known

    async def identities(
        self, keys: Sequence[tuple[str, str]], holder_keys: Sequence[tuple[str, str]] = ()
    ) -> list[IdentityRecord]:
        """Every identifier of the live profiles that hold any of `keys`, and each of
        `holder_keys` with its live holder (not the holder's other identifiers), in one
        statement."""
        if not keys and not holder_keys:
            return []
        # One index probe per key: a LATERAL subquery per unnest() row, kept from being
        # flattened by OFFSET 0. Otherwise, with stale statistics (a growing table), the
        # planner picks `ANY` filters or hash joins that scan the workspace's rows.
        # A holder's identifiers are found by profile_id alone (profile ids are unique
        # across workspaces): with `workspace_id = $1` too, stale statistics made
        # Postgres AND a bitmap of the whole workspace (via the primary key) into every
        # probe, 1.2 s for a 2,000-event group.
        rows = await self._raw.fetch(
            "WITH holders AS (SELECT DISTINCT h.profile_id"
            f" FROM {_json_rows('$2', '$3')} AS k(t, v) CROSS JOIN LATERAL"
            " (SELECT profile_id FROM identities WHERE workspace_id = $1"
            " AND id_type = k.t AND id_value = k.v OFFSET 0) h)"
            " SELECT i.id_type, i.id_value, i.profile_id, p.created_at_us, p.last_seen_us"
            " FROM holders h CROSS JOIN LATERAL"
            " (SELECT created_at_us, last_seen_us FROM profiles WHERE profile_id = h.profile_id"
            " AND deleted_at_us IS NULL AND canonical_id = profile_id OFFSET 0) p"
            " CROSS JOIN LATERAL (SELECT id_type, id_value, profile_id FROM identities"
            " WHERE profile_id = h.profile_id OFFSET 0) i"
            " UNION ALL"
            " SELECT k.t, k.v, h.profile_id, p.created_at_us, p.last_seen_us"
            f" FROM {_json_rows('$4', '$5')} AS k(t, v) CROSS JOIN LATERAL"
            " (SELECT profile_id FROM identities WHERE workspace_id = $1"
            " AND id_type = k.t AND id_value = k.v OFFSET 0) h CROSS JOIN LATERAL"
            " (SELECT created_at_us, last_seen_us FROM profiles WHERE profile_id = h.profile_id"
            " AND deleted_at_us IS NULL AND canonical_id = profile_id OFFSET 0) p",
            self._workspace_id,
            _list([k[0] for k in keys]),
            _list([k[1] for k in keys]),
            _list([k[0] for k in holder_keys]),
            _list([k[1] for k in holder_keys]),
        )
        # asyncpg's records as they are: IdentityGraph.load unpacks them like tuples.
        return rows

    async def traits_of(self, profile_ids: Sequence[int]) -> list[TraitRow]:
        """Stored trait rows (tombstones included) of profiles."""
        rows = await self._raw.fetch(
            "SELECT t.profile_id, t.key, t.value::text, t.timestamp_us, t.seq"
            " FROM unnest($1::bigint[]) AS u(p) CROSS JOIN LATERAL"
            " (SELECT * FROM profile_traits WHERE profile_id = u.p OFFSET 0) t",
            list(profile_ids),
        )
        return [TraitRow(r[0], r[1], _loads(r[2]), r[3], r[4]) for r in rows]

    async def _nextvals(self, sequence: str, count: int) -> list[int]:
        rows = await self._raw.fetch(
            f"SELECT nextval('{sequence}') FROM generate_series(1, $1::int) ORDER BY 1", count
        )
        return [row[0] for row in rows]

    async def allocate(
        self, seq_count: int, profile_count: int, shards: Sequence[int] = ()
    ) -> tuple[list[int], list[int]]:
        """The group's event seqs and new profile ids in one round trip (two cost a
        round trip more per group): the same values `allocate_seqs` and
        `allocate_profiles` draw, each sequence's ascending. With several shards the
        first draw is `profile_count` x shards consecutive values, which hold enough
        of every remainder unless another writer drew in between (then more are drawn,
        as `allocate_profiles` does)."""
        n = self._store.shards
        draw = profile_count if n == 1 else profile_count * n
        row = await self._raw.fetchrow(
            "SELECT ARRAY(SELECT nextval('events_seq_seq')"
            " FROM generate_series(1, $1::int) ORDER BY 1),"
            " ARRAY(SELECT nextval('profiles_profile_id_seq')"
            " FROM generate_series(1, $2::int) ORDER BY 1)",
            seq_count,
            draw,
        )
        seqs, drawn = list(row[0]), list(row[1])
        if n == 1 or not profile_count:
            return seqs, drawn
        return seqs, await self._profiles_on(shards, drawn)

    async def write(self, plan: WritePlan) -> WriteResult:
        """Apply a batch's plan; returns the trait rows that changed and redirects."""
        raw = self._raw
        ws = plan.workspace_id
        now = plan.now_us
        if plan.new_profiles:
            ids = [pid for pid, _ in plan.new_profiles]
            canonical = [c for _, c in plan.new_profiles]
            await raw.execute(
                "INSERT INTO profiles (profile_id, workspace_id, canonical_id, created_at_us,"
                " last_seen_us, merged_at_us, deleted_at_us)"
                " SELECT p, $1, c, $2, s, CASE WHEN c <> p THEN $2::bigint END, NULL"
                " FROM (SELECT p::bigint, c::bigint, s::bigint"
                f" FROM {_json_rows('$3', '$4', '$5')} AS j(p, c, s)) AS u",
                ws,
                now,
                _list(ids),
                _list(canonical),
                _list([plan.last_seen.get(pid) for pid in ids]),
            )
        redirected: dict[int, list[int]] = {}
        for loser, survivor in plan.merged_existing:
            # Rare (a merge of two stored profiles): one statement per merge is fine.
            moved = await raw.fetch(
                "UPDATE profiles SET canonical_id = $3, merged_at_us = CASE WHEN"
                " profile_id = $2 THEN $4::bigint ELSE merged_at_us END"
                " WHERE workspace_id = $1 AND canonical_id = $2 RETURNING profile_id",
                ws,
                loser,
                survivor,
                now,
            )
            redirected.setdefault(survivor, []).extend(row[0] for row in moved)
            await raw.execute(
                # profile_id alone, as in identities(): ids are unique across workspaces.
                "UPDATE identities SET profile_id = $2 WHERE profile_id = $1",
                loser,
                survivor,
            )
        if plan.identity_links:
            links = plan.identity_links
            await raw.execute(
                "INSERT INTO identities (workspace_id, id_type, id_value, profile_id,"
                " first_seen_us) SELECT $1, t, v, p::bigint, $2"
                f" FROM {_json_rows('$3', '$4', '$5')} AS u(t, v, p)"
                " ON CONFLICT (workspace_id, id_type, id_value)"
                " DO UPDATE SET profile_id = EXCLUDED.profile_id",
                ws,
                now,
                _list([link[0] for link in links]),
                _list([link[1] for link in links]),
                _list([link[2] for link in links]),
            )
        stored = plan.events
        # COPY, like events: the duplicate check above ran under the write lock, so a
        # conflict here is an error that fails the group, as the INSERT's would.
        await raw.copy_records_to_table(
            "event_ids",
            records=[(ws, s.event.message_id, s.seq, s.profile_id) for s in stored],
            columns=("workspace_id", "message_id", "seq", "profile_id"),
        )
        await self._insert_events(ws, stored)
        if plan.drop_traits_of:
            await raw.execute(
                "DELETE FROM profile_traits WHERE profile_id = ANY($1::bigint[])",
                plan.drop_traits_of,
            )
        changed = await self._upsert_traits(ws, plan.traits)
        created = {p for p, _ in plan.new_profiles}
        touched = [(p, seen) for p, seen in plan.last_seen.items() if p not in created]
        if plan.merges:
            found = plan.merges
            await raw.execute(
                "INSERT INTO merges (workspace_id, survivor_id, merged_id, event_seq, reason,"
                " merged_at_us) SELECT $1, s, m, e, r, $2"
                " FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::text[])"
                " WITH ORDINALITY AS u(s, m, e, r, n) ORDER BY n",
                ws,
                now,
                [m.survivor_id for m in found],
                [m.merged_id for m in found],
                [m.event_seq for m in found],
                [m.reason for m in found],
            )
        streams = [cursor_name(shard, self._store.shards) for shard in self.shards]
        if touched:
            # The group's last statement, with the cursor's update in the same round
            # trip (a data-modifying CTE runs whether or not the query reads it).
            await raw.execute(
                "WITH c AS (UPDATE ingest_cursor SET last_seq = $3"
                " WHERE stream = ANY($4::text[]))"
                " UPDATE profiles p SET last_seen_us = u.seen"
                f" FROM (SELECT pid::bigint, seen::bigint FROM {_json_rows('$1', '$2')}"
                " AS j(pid, seen)) AS u"
                " WHERE p.profile_id = u.pid"
                " AND (p.last_seen_us IS NULL OR p.last_seen_us < u.seen)",
                _list([t[0] for t in touched]),
                _list([t[1] for t in touched]),
                plan.last_seq,
                streams,
            )
        else:
            await raw.execute(
                "UPDATE ingest_cursor SET last_seq = $1 WHERE stream = ANY($2::text[])",
                plan.last_seq,
                streams,
            )
        return WriteResult(changed, redirected)

    async def _upsert_traits(self, workspace_id: str, rows: list[TraitRow]) -> list[TraitRow]:
        """Write rows that are newer than what is stored; returns those that won."""
        if not rows:
            return []
        found = await self._raw.fetch(
            "INSERT INTO profile_traits (profile_id, key, workspace_id, value, timestamp_us, seq)"
            " SELECT p::bigint, k, $1, v::jsonb, t::bigint, s::bigint"
            f" FROM {_json_rows('$2', '$3', '$4', '$5', '$6')} AS u(p, k, v, t, s)"
            " ON CONFLICT (profile_id, key) DO UPDATE SET value = EXCLUDED.value,"
            " timestamp_us = EXCLUDED.timestamp_us, seq = EXCLUDED.seq"
            " WHERE (EXCLUDED.timestamp_us, EXCLUDED.seq)"
            " > (profile_traits.timestamp_us, profile_traits.seq)"
            " RETURNING profile_id, key, value::text, timestamp_us, seq",
            workspace_id,
            _list([r.profile_id for r in rows]),
            _list([r.key for r in rows]),
            # JSON null becomes SQL NULL, not JSON null: the tombstone of a removed trait.
            _list([None if r.value is None else _json_text(r.value) for r in rows]),
            _list([r.timestamp_us for r in rows]),
            _list([r.seq for r in rows]),
        )
        return [TraitRow(r[0], r[1], _loads(r[2]), r[3], r[4]) for r in found]
