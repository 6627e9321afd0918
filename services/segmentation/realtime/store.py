"""Persistence of the realtime worker: the realtime definitions of a workspace, the
re-evaluation of a set of profiles written through the segmentation store's writer
(one transaction per workspace and batch), and the profiles' next due instants.

Nothing is evaluated per profile: each computed trait is one statement and each
dependency layer of audiences one ``sql.compile_audiences`` statement, restricted to
the batch's canonical profiles, so the answer for each of them is exactly what a
Recompute would give at the same instant.

A workspace's definitions and their statements (``sql.Prepared``: built once, run for
any instant and profiles) are kept between batches under the workspace's definitions
version (`definitions_version`): one small read per batch tells whether any audience or
computed trait of the workspace changed (created, edited, deleted, its state or live
version moved), and only then are they read and built again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.segmentation import sql, sql_accounts
from services.segmentation.accounts import member_id
from services.segmentation.definitions import computed_dependencies_raw
from services.segmentation.language import (
    dependency_layers,
    dependency_order,
    parse_audience,
    parse_computed_trait,
)
from services.segmentation.model import (
    FAILED,
    LIVE,
    AudienceRecord,
    Change,
    ComputedTraitRecord,
    Diff,
    Progress,
)
from services.segmentation.realtime.schedule import EventKind, boundary_offsets
from services.segmentation.status_tables import (
    audience_status,
    change_sequences,
    computed_trait_status,
)
from services.segmentation.store import (
    MembershipWriter,
    SegmentationStore,
    change_from_row,
    drop_temp_table,
    rollup_pairs,
    write_computed_values,
)
from services.segmentation.tables import (
    accounts,
    audience_versions,
    audiences,
    computed_traits,
    membership_changes,
)
from services.shared.db.tables import events, profiles

# Workspaces whose definitions and statements are kept (least recently used dropped).
CACHED_WORKSPACES = 256


@dataclass(frozen=True)
class RealtimeDefinitions:
    """What the worker evaluates in one workspace."""

    layers: list[list[AudienceRecord]]  # live realtime audiences in dependency layers
    computed: list[ComputedTraitRecord]  # live realtime computed traits
    offsets: dict[EventKind, set[int]]  # see schedule.boundary_offsets
    # Some realtime definition is not servable yet (its newest version backfilling).
    waiting: bool = False
    # Live realtime account-level audiences: evaluated after every user layer (they
    # read user audiences, never the reverse), for the accounts of the touched users.
    accounts: list[AudienceRecord] = field(default_factory=list)
    # "a:<audience id>" / "c:<computed key>" -> (version served, its boundary offsets)
    served: dict[str, tuple[int, dict[EventKind, set[int]]]] = field(default_factory=dict)
    # The statements of `layers` and `computed` (in their order), built once per version
    # of the definitions (RealtimeStore.definitions).
    layer_statements: list[sql.Prepared] = field(default_factory=list)
    computed_statements: list[sql.Prepared] = field(default_factory=list)


@dataclass(frozen=True)
class LoggedChange:
    """A change record as the log holds it: the change and the trace context stored
    with it (traceparent, tracestate; empty for a batch writer's records)."""

    change: Change
    trace: dict[str, str]


def _trace_of(row: Any) -> dict[str, str]:
    return {
        name: value
        for name, value in (("traceparent", row.traceparent), ("tracestate", row.tracestate))
        if value
    }


async def _store_traces(
    c: AsyncConnection,
    ws: str,
    before: int,
    changes: Sequence[Change],
    traces: Mapping[int, Mapping[str, str]],
) -> None:
    """Store each changed profile's trace context on its records of this transaction
    (seq > `before`): one executemany, only for profiles that have both."""
    mc = membership_changes
    params = [
        {
            "p_pid": pid,
            "p_parent": traces[pid].get("traceparent"),
            "p_state": traces[pid].get("tracestate"),
        }
        for pid in sorted({ch.profile_id for ch in changes})
        if traces.get(pid, {}).get("traceparent")
    ]
    if not params:
        return
    await c.execute(
        update(mc)
        .where(
            mc.c.workspace_id == ws,
            mc.c.profile_id == sa.bindparam("p_pid"),
            mc.c.seq > before,
        )
        .values(traceparent=sa.bindparam("p_parent"), tracestate=sa.bindparam("p_state")),
        params,
    )


async def _touched_accounts(c: AsyncConnection, ws: str, scope: Sequence[int]) -> list[int]:
    """The member ids of the accounts any profile of the canonical profiles `scope`
    ever named in a group call (also those it no longer belongs to: it may have just
    left); accounts first seen in this batch get their ids first."""
    await c.execute(sql_accounts.register_accounts(ws, c.dialect.name))
    ge, p, a = events, profiles, accounts
    query = (
        select(a.c.account_id)
        .select_from(
            ge.join(p, p.c.profile_id == ge.c.profile_id).join(
                a, and_(a.c.workspace_id == ws, a.c.group_id == ge.c.group_id)
            )
        )
        .where(ge.c.workspace_id == ws, ge.c.type == "group", p.c.canonical_id.in_(scope))
        .distinct()
    )
    return sorted(member_id(r.account_id) for r in await c.execute(query))


@dataclass
class Evaluated:
    """What one re-evaluation of a set of profiles changed (committed)."""

    changes: list[Change] = field(default_factory=list)  # membership records, seq order
    memberships: list[tuple[AudienceRecord, Diff]] = field(default_factory=list)
    # computed trait key -> (changed profile -> value, profiles whose value went)
    computed: dict[str, tuple[dict[int, Any], list[int]]] = field(default_factory=dict)


class RealtimeStore:
    """The realtime worker's reads and writes of one database."""

    def __init__(self, engine: AsyncEngine, store: SegmentationStore) -> None:
        self._engine = engine
        self._store = store
        # ws -> (its definitions version, its definitions and statements)
        self._cache: OrderedDict[str, tuple[tuple[Any, ...], RealtimeDefinitions | None]] = (
            OrderedDict()
        )

    async def definitions_version(self, ws: str) -> tuple[Any, ...]:
        """What `definitions` depends on: per audience its id, key, version, flags,
        state, live version and definition; per computed trait its key, flag, version,
        state and definition. Equal versions mean equal definitions, so this is the
        workspace's definitions version, and every writer changes it without knowing of
        it: the segmentation service, a backfill going live or failing, a delete, even
        an edit of a stored definition in place. One read of a few small rows, against
        parsing every definition and building its statements again (~0.1 s a batch
        with 50 audiences and 10 computed traits)."""
        a, s, v = audiences, audience_status, audience_versions
        ct, cs = computed_traits, computed_trait_status
        audience_rows = (
            select(
                a.c.audience_id,
                a.c.key,
                a.c.current_version,
                a.c.realtime,
                a.c.account_level,
                s.c.state,
                s.c.live_version,
                v.c.definition,
            )
            .select_from(
                a.join(s, s.c.audience_id == a.c.audience_id).join(
                    v,
                    and_(v.c.audience_id == a.c.audience_id, v.c.version == a.c.current_version),
                )
            )
            .where(a.c.workspace_id == ws, a.c.deleted_at_us.is_(None))
            .order_by(a.c.audience_id)
        )
        computed_rows = (
            select(ct.c.key, ct.c.realtime, cs.c.version, cs.c.state, ct.c.definition)
            .select_from(
                ct.join(cs, and_(cs.c.workspace_id == ct.c.workspace_id, cs.c.key == ct.c.key))
            )
            .where(ct.c.workspace_id == ws)
            .order_by(ct.c.key)
        )
        async with self._engine.connect() as c:
            return (
                tuple(tuple(r) for r in await c.execute(audience_rows)),
                tuple(tuple(r) for r in await c.execute(computed_rows)),
            )

    async def definitions(self, ws: str) -> RealtimeDefinitions | None:
        """The servable realtime audiences and computed traits of `ws` (LIVE, newest
        version live) with their statements; None when it has no realtime definition at
        all. One whose newest version is still backfilling is left to its backfill
        (which writes the members of that version) and makes `waiting` true: the worker
        then remembers the profiles it evaluates, for the handover (worker.handover).
        Read and built again only when the workspace's definitions version changed."""
        # The version first: a change after it is read makes the next call read again.
        version = await self.definitions_version(ws)
        cached = self._cache.get(ws)
        if cached is not None and cached[0] == version:
            self._cache.move_to_end(ws)
            return cached[1]
        loaded = await self._load(ws)
        self._cache[ws] = (version, loaded)
        self._cache.move_to_end(ws)
        while len(self._cache) > CACHED_WORKSPACES:
            self._cache.popitem(last=False)
        return loaded

    async def _load(self, ws: str) -> RealtimeDefinitions | None:
        stored = await self._store.audience_definitions(ws)
        realtime = [a for a in stored.values() if a.realtime and a.state != FAILED]
        chosen = {a.key: a for a in realtime if a.state == LIVE and a.live_version == a.version}
        traits = [
            c for c in await self._store.list_computed(ws) if c.realtime and c.state != FAILED
        ]
        live = {c.key: c for c in traits if c.state == LIVE}
        waiting = len(chosen) < len(realtime) or len(live) < len(traits)
        # A computed trait that reads another (ref.computed) is evaluated after it, in the
        # same transaction, so it reads the value this batch wrote.
        order = dependency_order(
            {k: c.definition for k, c in live.items()}, computed_dependencies_raw, "computed trait"
        )
        computed = [live[k] for k in order if k in live]
        if not chosen and not computed and not waiting:
            return None
        account_level = [chosen.pop(k) for k in sorted(chosen) if chosen[k].account_level]
        layers = dependency_layers({k: a.definition for k, a in chosen.items()})
        served: dict[str, tuple[int, dict[EventKind, set[int]]]] = {}
        for a in [*chosen.values(), *account_level]:
            served[f"a:{a.audience_id}"] = (
                a.version,
                boundary_offsets([parse_audience(a.definition)], []),
            )
        for c in computed:
            served[f"c:{c.key}"] = (
                c.version,
                boundary_offsets([], [parse_computed_trait(c.definition)]),
            )
        offsets: dict[EventKind, set[int]] = {}
        for _, kinds in served.values():
            for kind, more in kinds.items():
                offsets.setdefault(kind, set()).update(more)
        ordered = [[chosen[k] for k in layer] for layer in layers]
        dialect = self._engine.dialect.name
        return RealtimeDefinitions(
            ordered,
            computed,
            offsets,
            waiting=waiting,
            accounts=account_level,
            served=served,
            layer_statements=[
                sql.prepare_audiences(
                    [a.definition for a in layer], workspace_id=ws, dialect=dialect
                )
                for layer in ordered
            ],
            computed_statements=[
                sql.prepare_computed_trait(c.definition, workspace_id=ws, dialect=dialect)
                for c in computed
            ],
        )

    async def realtime_workspaces(self) -> list[str]:
        """Every workspace with a realtime audience or computed trait."""
        a, ct = audiences, computed_traits
        query = sa.union(
            select(a.c.workspace_id).where(a.c.realtime, a.c.deleted_at_us.is_(None)),
            select(ct.c.workspace_id).where(ct.c.realtime),
        )
        async with self._engine.connect() as c:
            return sorted(r[0] for r in await c.execute(query))

    async def canonical(self, ws: str, profile_ids: Collection[int]) -> dict[int, int]:
        """profile id -> its canonical id now (unknown ids are left out)."""
        query = select(profiles.c.profile_id, profiles.c.canonical_id).where(
            profiles.c.workspace_id == ws, profiles.c.profile_id.in_(sorted(profile_ids))
        )
        async with self._engine.connect() as c:
            return {r.profile_id: r.canonical_id for r in await c.execute(query)}

    async def evaluate(
        self,
        ws: str,
        definitions: RealtimeDefinitions,
        scope: Sequence[int],
        now_us: int,
        traces: Mapping[int, Mapping[str, str]] | None = None,
    ) -> Evaluated:
        """Re-evaluate `definitions` for the canonical profiles `scope` at `now_us` and
        write what changed, in one transaction under the workspace's change-seq lock
        (serialised with every other membership writer of the workspace: a second
        worker, a Recompute). Evaluating the same profiles again at the same instant
        writes nothing. `traces` (canonical profile -> traceparent/tracestate of the
        event that touched it) is stored on that profile's change records, so a
        republish from the log carries it."""
        out = Evaluated()
        scope = sorted(set(scope))
        async with self._engine.connect() as c:
            transaction = await c.begin()
            await sql.batch_settings(c)
            writer = await MembershipWriter.start(c, ws, now_us, scope)
            for trait, statement in zip(
                definitions.computed, definitions.computed_statements, strict=True
            ):
                values = await sql.run_computed_trait(
                    c, statement, now_us=now_us, profile_ids=scope
                )
                written = await write_computed_values(c, ws, trait.key, values, now_us, scope)
                if written[0] or written[1]:
                    out.computed[trait.key] = written
            before = (
                await c.execute(
                    select(change_sequences.c.last_seq).where(change_sequences.c.workspace_id == ws)
                )
            ).scalar_one()
            for layer, statement in zip(
                definitions.layers, definitions.layer_statements, strict=True
            ):
                # Computed values and the earlier layers' memberships written above are
                # read by this statement (same transaction).
                rollup, pairs = await rollup_pairs(
                    c,
                    [a.audience_id for a in layer],
                    statement.statement,
                    statement.params(now_us, scope),
                )
                batch = [(a.audience_id, a.version) for a in layer]
                diffs = await writer.apply(batch, pairs, Progress(), None)
                await drop_temp_table(c, rollup)
                out.memberships += [
                    (a, d) for a, d in zip(layer, diffs, strict=True) if d.entered or d.exited
                ]
            if definitions.accounts:
                # A user event, a merge or a group call (linking a user, setting an
                # account trait) re-evaluates the accounts of the touched users.
                await writer.finish()
                members = await _touched_accounts(c, ws, scope)
                writer = await MembershipWriter.start(c, ws, now_us, members)
                for audience in definitions.accounts if members else []:
                    found = sql_accounts.compile_account_audience(
                        audience.definition, workspace_id=ws, now_us=now_us, dialect=c.dialect.name
                    ).subquery("acc")
                    account_pairs = select(
                        sa.literal(audience.audience_id, sa.BigInteger).label("aud"), found.c.pid
                    ).where(found.c.pid.in_(members))
                    batch = [(audience.audience_id, audience.version)]
                    (diff,) = await writer.apply(batch, account_pairs, Progress(), None)
                    if diff.entered or diff.exited:
                        out.memberships.append((audience, diff))
            keys = {a.audience_id: a.key for layer in definitions.layers for a in layer}
            keys |= {a.audience_id: a.key for a in definitions.accounts}
            rows = await c.execute(
                select(membership_changes)
                .where(membership_changes.c.workspace_id == ws, membership_changes.c.seq > before)
                .order_by(membership_changes.c.seq)
            )
            out.changes = [change_from_row(r, keys.get(r.audience_id, "")) for r in rows]
            await _store_traces(c, ws, before, out.changes, traces or {})
            await writer.finish()
            await transaction.commit()
        return out

    async def log_heads(self) -> dict[str, int]:
        """Workspace -> the seq of its latest change record (every workspace that has
        one): what the changes stream must have published up to."""
        query = select(change_sequences.c.workspace_id, change_sequences.c.last_seq)
        async with self._engine.connect() as c:
            return {r.workspace_id: r.last_seq for r in await c.execute(query) if r.last_seq}

    async def log_after(self, ws: str, after_seq: int, limit: int) -> list[LoggedChange]:
        """The change records of `ws` with seq > `after_seq` in seq order (at most
        `limit`), with their audience keys and stored trace context."""
        mc = membership_changes
        query = (
            select(mc, audiences.c.key.label("audience_key"))
            .select_from(mc.outerjoin(audiences, audiences.c.audience_id == mc.c.audience_id))
            .where(mc.c.workspace_id == ws, mc.c.seq > after_seq)
            .order_by(mc.c.seq)
            .limit(limit)
        )
        async with self._engine.connect() as c:
            return [
                LoggedChange(change_from_row(r, r.audience_key or ""), _trace_of(r))
                for r in await c.execute(query)
            ]

    async def next_due(
        self,
        ws: str,
        offsets: dict[EventKind, set[int]],
        scope: Sequence[int] | None,
        now_us: int,
    ) -> dict[int, int]:
        """Canonical profile -> the earliest instant after `now_us` at which one of its
        events (its own or a merged profile's) crosses a boundary of `offsets`; profiles
        with none are left out. One statement for the whole set; `scope` None: every
        profile of the workspace (a handover)."""
        if not offsets or (scope is not None and not scope):
            return {}
        ev, p = events, profiles
        scoped = []
        if scope is not None:
            # The events by their own profile ids as one array (an InitPlan, an index
            # condition), as sql.py scopes its statements: a join to `profiles` on the
            # canonical ids scanned the workspace's events when statistics were stale.
            own = profiles.alias("own")
            ids = (
                select(func.array_agg(own.c.profile_id))
                .where(own.c.workspace_id == ws, own.c.canonical_id.in_(sorted(scope)))
                .scalar_subquery()
            )
            scoped = [
                p.c.canonical_id.in_(sorted(scope)),
                ev.c.profile_id == sa.any_(sa.cast(ids, sa.ARRAY(sa.BigInteger))),
            ]
        arms = [
            select(p.c.canonical_id.label("pid"), func.min(ev.c.timestamp_us + offset).label("at"))
            .select_from(ev.join(p, p.c.profile_id == ev.c.profile_id))
            .where(
                ev.c.workspace_id == ws,
                *scoped,
                ev.c.type == kind[0],
                ev.c.name == kind[1],
                ev.c.timestamp_us > sa.literal(now_us - offset, sa.BigInteger),
            )
            .group_by(p.c.canonical_id)
            for kind, kind_offsets in sorted(offsets.items())
            for offset in sorted(kind_offsets)
        ]
        found = sa.union_all(*arms).subquery("due")
        query = select(found.c.pid, func.min(found.c.at)).group_by(found.c.pid)
        async with self._engine.connect() as c:
            return {int(pid): int(at) for pid, at in await c.execute(query)}
