"""Batch evaluation in the database: audience definitions and computed traits compiled
to SQLAlchemy Core, for Postgres (JSONB) and SQLite (JSON1).

The semantics are exactly those of ``reference.py`` (design.md section 6); the
conformance and property tests hold the two to each other.

Shape of an audience query (one statement, the database does all the work)::

    WITH e_own AS (one GROUP BY pass over the events: a count(*) FILTER (WHERE ..)
                   column per event condition, per the events' own profile id)
    SELECT u.pid FROM universe u                    -- alive canonical profiles
      LEFT JOIN e_own ON e_own.own = u.pid
      LEFT JOIN (e_own rows of merged-away profiles summed per survivor: few) em
        ON em.pid = u.pid                           -- a count is e_own's + em's
      LEFT JOIN (one GROUP BY pass over the traits: the latest value per key) t ...
      LEFT JOIN computed_trait_values per computed key ...
    WHERE <the condition tree over those columns; funnels as an ordered window pass
           over their step events, audience references as correlated EXISTS>

Every leaf is made NULL-free (``CASE WHEN p THEN true ELSE false END``) before it meets
NOT, so SQL's three-valued logic cannot turn "missing" into "unknown".

"Latest by (timestamp, seq)" (traits, first/last, most_frequent ties) is a single MAX
over a fixed-width sortable string ``lpad(timestamp) || lpad(seq) || json`` instead of
a window function or a self anti-join: one aggregate pass, no per-profile sort.

Known dialect limits (documented, outside the conformance cases): on SQLite, equality of
two *dynamic* array/object values (ref filters) compares their JSON text; unique_list
orders arrays/objects by their JSON text, which differs between dialects. Account-level
audiences are compiled by ``sql_accounts.py`` on top of ``compile_audiences``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    not_,
    or_,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from services.segmentation import tables as seg
from services.segmentation.language import (
    Account,
    All,
    AnyOf,
    AudienceRef,
    Computed,
    ComputedRef,
    ComputedTraitDef,
    ContextCondition,
    Event,
    Filter,
    Funnel,
    Node,
    Not,
    Prediction,
    StepRef,
    Trait,
    TraitRef,
    Window,
    computed_trait_refs,
    iter_nodes,
    node_filters,
    parse_audience,
    parse_computed_trait,
    split_path,
    trait_refs,
    trait_row_keys,
)
from services.segmentation.reference import UNIQUE_LIST_LIMIT
from services.shared.db.tables import events, profile_traits, profiles
from services.shared.filters_sql import (
    JV,
    JsonDialect,
    PostgresJson,
    SQLiteJson,
    compare,
    json_dialect,
    match_literal,
    match_ref,
    null_free,
)

__all__ = [
    "BATCH_SETTINGS",
    "UnsupportedInSQL",
    "batch_settings",
    "compile_audience",
    "compile_audiences",
    "compile_computed_trait",
    "evaluate_audience",
    "evaluate_audiences",
    "evaluate_computed_trait",
]

_SCALAR_KINDS = ("string", "number", "boolean")


class UnsupportedInSQL(NotImplementedError):
    """The definition uses a construct the SQL compiler does not handle yet."""


# --------------------------------------------------------------------------- JSON values


class _Dialect(JsonDialect):
    """The JSON value operations of ``services.shared.filters_sql`` and what batch
    evaluation adds to them: sortable encodings, collation, JSON results."""

    @abstractmethod
    def pad(self, n: Any) -> Any: ...
    def c(self, s: Any) -> Any:
        """Byte-order (code point) collation for string MAX/ORDER BY."""
        return s

    @abstractmethod
    def json_result(self, text_expr: Any) -> Any: ...
    def to_float(self, e: Any) -> Any:
        return e

    @abstractmethod
    def group_array(self, text_expr: Any) -> Any: ...
    def sort_keys(self, v: JV) -> tuple[Any, Any, Any]:
        """(rank, number, text) ordering values as ``reference.value_order_key``."""
        rank = case(
            (self.is_kind(v, "number"), 0),
            (self.is_kind(v, "string"), 1),
            (self.is_kind(v, "boolean"), 2),
            (self.is_kind(v, "array"), 3),
            else_=4,
        )
        num = case((self.is_kind(v, "number"), self.num(v)))
        txt = case((self.is_kind(v, "string"), self.text(v)), else_=self.json_text(v))
        return rank, num, self.c(txt)


class _Postgres(PostgresJson, _Dialect):
    def pad(self, n: Any) -> Any:
        return func.lpad(cast(n, Text), 20, "0", type_=Text)

    def c(self, s: Any) -> Any:
        return sa.collate(s, "C")

    def json_result(self, text_expr: Any) -> Any:
        return cast(text_expr, JSONB)

    def to_float(self, e: Any) -> Any:
        # numeric aggregates arrive as Decimal; the API speaks JSON numbers.
        return cast(e, sa.Float)

    def group_array(self, text_expr: Any) -> Any:
        return func.jsonb_agg(cast(text_expr, JSONB))


class _SQLite(SQLiteJson, _Dialect):
    def pad(self, n: Any) -> Any:
        return func.printf("%020d", n, type_=Text)

    def json_result(self, text_expr: Any) -> Any:
        return sa.type_coerce(text_expr, sa.JSON)

    def group_array(self, text_expr: Any) -> Any:
        return func.json_group_array(func.json(text_expr))


class _NoIndex(ColumnElement[Any]):
    """A column SQLite's planner must not use an index for (rendered as ``+col``, the
    documented way to disqualify a term); other dialects see the plain column. Its
    column is part of SQLAlchemy's cache key: without it a statement holding one had
    no key, so it was compiled anew on every execution (a realtime batch's funnels)."""

    inherit_cache = True
    # A list, as SQLAlchemy declares it (an instance variable of its base classes).
    _traverse_internals = [("col", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, col: Any) -> None:
        self.col = col
        self.type = col.type


@compiles(_NoIndex)
def _noindex_default(element: _NoIndex, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.col, **kw)


@compiles(_NoIndex, "sqlite")
def _noindex_sqlite(element: _NoIndex, compiler: Any, **kw: Any) -> str:
    return "+" + compiler.process(element.col, **kw)


def _noindex(col: Any) -> Any:
    return _NoIndex(col)


def _dialect(name: str) -> _Dialect:
    """``json_dialect(name)`` with what batch evaluation adds to it."""
    return _Postgres() if isinstance(json_dialect(name), PostgresJson) else _SQLite()


# --------------------------------------------------------------------------- windows


def _offsets(window: Window) -> tuple[int, int]:
    """`window`'s (exclusive lower, inclusive upper) bound as microseconds before now:
    every window is relative to now, so its shape never depends on the instant."""
    lo, hi = window.bounds(0)
    return -lo, -hi


# The parameters of a statement that change between evaluations of the same definitions
# (see `Prepared`): instants as ``now_<us before now>`` (``now_m<us>``: after now) and
# the canonical profiles an evaluation is restricted to.
_NOW_PREFIX = "now_"
SCOPE_PARAM = "scope_ids"


def _now_param(now_us: int, before_us: int) -> BindParameter[int]:
    """The instant `before_us` before now as a named parameter (the same name for the
    same instant wherever the statement uses it)."""
    name = f"{_NOW_PREFIX}{before_us}" if before_us >= 0 else f"{_NOW_PREFIX}m{-before_us}"
    return sa.bindparam(name, now_us - before_us, type_=sa.BigInteger)


def _window(
    t: Any, window: Window | None, at: Callable[[int], Any], checked_upto_now: bool = False
) -> ColumnElement[bool]:
    """`t` inside `window` and not after now (`at(us)`: the instant `us` before now);
    `checked_upto_now`: the statement already requires ``t <= now``, so a window
    reaching now needs only its lower bound."""
    if window is None:
        return true() if checked_upto_now else t <= at(0)
    lo, hi = _offsets(window)
    if checked_upto_now and hi <= 0:
        return t > at(lo)
    return and_(t > at(lo), t <= at(max(hi, 0)))


# --------------------------------------------------------------------------- audiences


def merged_away(p: Any) -> ColumnElement[bool]:
    """Whether a row of `p` (``profiles`` or an alias) was merged into another profile.

    Written as the exact expression of the ``st_profiles_merged`` statistics (migration
    0006), whose most common values tell the planner how many profiles are merged away
    (usually few). For ``canonical_id <> profile_id`` it would assume 99.5% (one minus
    its column = column guess): it then hashed the whole trait table or a million-row
    join result against what it took for a million merged profiles, and there were none.
    """
    return null_free(p.c.canonical_id != p.c.profile_id)


def trait_path_value(d: _Dialect, row: Callable[[str], JV], name: str) -> JV:
    """The value trait `name` reads, from `row` (top-level trait key -> its value):
    the literal key when it holds a value, else the dotted path walked from the value
    of its first part, as ``reference.trait_value``."""
    keys = trait_row_keys(name)
    if len(keys) == 1:
        return row(name)
    return d.first_present(row(name), d.walk(row(keys[1]), split_path(name[len(keys[1]) + 1 :])))


def boolean_node(
    n: Node, compile_node: Callable[[Node], ColumnElement[bool]]
) -> ColumnElement[bool] | None:
    """`all`/`any`/`not` of `n`'s children, each compiled by `compile_node`; None when
    `n` is not one of those (the caller compiles its own leaf nodes)."""
    if isinstance(n, All):
        return and_(*[compile_node(c) for c in n.children])
    if isinstance(n, AnyOf):
        return or_(*[compile_node(c) for c in n.children])
    if isinstance(n, Not):
        return not_(compile_node(n.child))
    return None


def _event_key(n: Event) -> str:
    """What an event condition's count column depends on (not its count bound). repr
    keeps 1, 1.0 and true apart, so only truly identical conditions share a column."""
    return repr((n.type, n.name, n.where, n.window))


class _AudienceCompiler:
    def __init__(
        self,
        d: _Dialect,
        workspace_id: str,
        now_us: int,
        profile_ids: Sequence[int] | None = None,
    ) -> None:
        self.d = d
        self.ws = workspace_id
        self.now = now_us
        # Instants the statement compares with, as microseconds before now (`at`).
        self.before: set[int] = set()
        # Canonical ids the evaluation is restricted to (realtime: the profiles a batch
        # of events touched); None is every profile of the workspace.
        self.profile_ids = None if profile_ids is None else sorted(set(profile_ids))
        self.event_leaves: list[Event] = []
        self.event_cols: dict[str, str] = {}  # _event_key -> column
        self.trait_cols: dict[str, str] = {}
        self.computed: dict[str, Any] = {}
        # computed key -> its stored values, read by filters with ``ref.computed``
        self.computed_refs: dict[str, Any] = {}
        self.funnels = 0  # numbers the funnels' derived tables
        self.merged_uses = 0  # numbers the merged-profile joins
        self.u: Any = None
        self.t: Any = None  # the latest trait values (of merged profiles: own_traits)
        self.own_t: dict[str, Any] = {}  # trait key -> the profile's own trait row
        self.e: Any = None  # event counts per own profile id (a CTE)
        self.em: Any = None  # those of merged-away profiles, per survivor

    def at(self, before_us: int) -> BindParameter[int]:
        """The instant `before_us` before now, as a parameter `Prepared` can set anew."""
        self.before.add(before_us)
        return _now_param(self.now, before_us)

    def scope_ids(self) -> BindParameter[Any]:
        """The canonical profiles the evaluation is restricted to (one expanding
        parameter, as ``IN (<list>)`` binds its list)."""
        return sa.bindparam(SCOPE_PARAM, self.profile_ids, expanding=True, type_=sa.BigInteger)

    # -- sources

    def universe(self) -> Any:
        scope = [] if self.profile_ids is None else [profiles.c.profile_id.in_(self.scope_ids())]
        return (
            sa.select(profiles.c.profile_id.label("pid"))
            .where(
                profiles.c.workspace_id == self.ws,
                # Not merged away, as the negation of `merged_away` (whose statistics the
                # planner has): with its guess for column = column (0.5%) it expected
                # 5,000 rows for 1M and hashed the universe side of every join in turn.
                not_(merged_away(profiles)),
                profiles.c.deleted_at_us.is_(None),
                *scope,
            )
            .subquery("u")
        )

    def in_scope(self, own_profile_id: Any) -> list[ColumnElement[bool]]:
        """Conditions keeping rows (events, traits) whose own profile is, or is merged
        into, one of ``profile_ids``; none when the evaluation covers everyone."""
        if self.profile_ids is None:
            return []
        p = profiles.alias("scope")
        where = (p.c.workspace_id == self.ws, p.c.canonical_id.in_(self.scope_ids()))
        if self.d.name == "postgresql":
            # `= ANY(<one array>)`: an uncorrelated scalar subquery runs once (an InitPlan)
            # and its array is an index condition on (workspace, profile, time). The
            # semi-join form `IN (SELECT ...)` let the planner, when the events table had
            # no fresh statistics (a new workspace, a burst of ingest), scan the whole
            # workspace once per scoped profile and filter: seconds instead of
            # milliseconds per realtime batch.
            ids = sa.select(func.array_agg(p.c.profile_id)).where(*where).scalar_subquery()
            # (The cast makes it `ANY(<array>)`, not `ANY(<subquery>)`, a row comparison.)
            return [own_profile_id == sa.any_(cast(ids, sa.ARRAY(sa.BigInteger)))]
        return [own_profile_id.in_(sa.select(p.c.profile_id).where(*where))]

    def to_canonical(self, src: Any, profile_id: Any) -> tuple[Any, Any]:
        """(`src` joined to the workspace's merged profiles, the canonical id of
        `profile_id`). Only merged-away profiles are joined (few), not every profile:
        probing a million-entry hash table for each of ten million events cost more
        than the aggregation itself. Rows of unknown or deleted profiles keep their own
        id and are dropped by the join to the universe."""
        p = profiles.alias(f"merged{self.merged_uses}")
        self.merged_uses += 1
        merged = (
            sa.select(p.c.profile_id, p.c.canonical_id)
            .where(p.c.workspace_id == self.ws, merged_away(p))
            .subquery(f"m{self.merged_uses - 1}")
        )
        src = src.outerjoin(merged, merged.c.profile_id == profile_id)
        return src, func.coalesce(merged.c.canonical_id, profile_id)

    def traits_subquery(self, keys: Sequence[str], merged_only: bool = False) -> Any:
        """Latest value per (canonical profile, key) in one pass; trait rows may sit on
        merged profiles, so the winner is chosen across the whole merged set.
        `merged_only`: only for the profiles that have others merged into them (and
        theirs), for ``own_traits``."""
        d = self.d
        pt = profile_traits
        enc = (
            d.pad(pt.c.timestamp_us)
            + d.pad(pt.c.seq)
            + func.coalesce(cast(pt.c.value, Text), "null")
        )
        cols = []
        for i, k in enumerate(keys):
            self.trait_cols[k] = f"t{i}"
            # Decoded here, once per profile, not again by every condition reading it.
            latest = func.substr(func.max(d.c(case((pt.c.key == k, enc)))), 41)
            cols.append(d.decode(latest).expr.label(f"t{i}"))
        src, pid = self.to_canonical(pt, pt.c.profile_id)
        where = [pt.c.workspace_id == self.ws, pt.c.key.in_(list(keys))]
        where += self.in_scope(pt.c.profile_id)
        if merged_only:
            p = profiles.alias("merged_t")
            merges = sa.select(p.c.profile_id, p.c.canonical_id).where(
                p.c.workspace_id == self.ws, merged_away(p)
            )
            own = merges.with_only_columns(p.c.profile_id)
            survivors = merges.with_only_columns(p.c.canonical_id)
            where.append(pt.c.profile_id.in_(sa.union(own, survivors)))
        return (
            sa.select(pid.label("pid"), *cols)
            .select_from(src)
            .where(*where)
            .group_by(pid)
            .subquery("t")
        )

    def own_traits(self, src: Any, keys: Sequence[str]) -> Any:
        """`src` (the universe) joined to each key's trait row of the profile itself
        (``profile_traits`` holds one row per profile and key: ingest keeps the latest)
        and to ``traits_subquery`` over the merged profiles only: the latest-value
        aggregate then runs over the few people with merges instead of every trait row
        (it was ~3 s of a 10M-event rollup)."""
        self.t = self.traits_subquery(keys, merged_only=True)
        self.own_t = {}
        for i, k in enumerate(keys):
            own = profile_traits.alias(f"tr{i}")
            self.own_t[k] = own
            src = src.outerjoin(
                own,
                and_(
                    own.c.profile_id == self.u.c.pid,
                    own.c.workspace_id == self.ws,
                    own.c.key == k,
                ),
            )
        return src.outerjoin(self.t, self.t.c.pid == self.u.c.pid)

    def trait_value(self, name: str) -> JV:
        """The value trait `name` reads (``reference.trait_value``): its literal key's
        value, else the dotted path walked from the value of its first part."""
        return trait_path_value(self.d, self._trait_row, name)

    def _trait_row(self, key: str) -> JV:
        """The latest value of the top-level trait `key` (a row of ``profile_traits``)."""
        col = getattr(self.t.c, self.trait_cols[key])
        if key in self.own_t:
            # A person with merges has a row in the merged aggregate (its winner is
            # chosen across the merged set); everyone else has only their own row.
            own = self.own_t[key].c.value
            if self.d.name != "postgresql":
                own = cast(own, Text)
            col = case((self.t.c.pid.is_not(None), col), else_=own)
        return JV(col) if self.d.name == "postgresql" else self.d.decode(col)

    def filter_pred(self, f: Filter, props: Any, chain: Sequence[Any] = ()) -> ColumnElement[bool]:
        v = self.d.prop(props, f.property)
        if f.ref is None:
            return match_literal(self.d, v, f.op, f.value)
        if isinstance(f.ref, TraitRef):
            ref = self.trait_value(f.ref.trait)
        elif isinstance(f.ref, ComputedRef):
            ref = self.stored_value(self.computed_refs[f.ref.computed])
        else:
            ref = self.d.prop(chain[f.ref.step].c.properties, f.ref.property)
        return match_ref(self.d, v, f.op, ref)

    def stored_value(self, cv: Any) -> JV:
        """The value of a row of ``computed_trait_values`` (an alias joined by key)."""
        if self.d.name == "postgresql":
            return JV(cv.c.value)
        return self.d.decode(cast(cv.c.value, Text))

    def register_computed_refs(self, filters: Sequence[Filter]) -> None:
        """An alias of ``computed_trait_values`` per computed key `filters` compare with."""
        for f in filters:
            if isinstance(f.ref, ComputedRef) and f.ref.computed not in self.computed_refs:
                alias = seg.computed_trait_values.alias(f"cr{len(self.computed_refs)}")
                self.computed_refs[f.ref.computed] = alias

    def join_computed(self, src: Any, cv: Any, key: str, pid: Any) -> Any:
        """`src` joined to the stored value of computed trait `key` of canonical `pid`."""
        return src.outerjoin(
            cv, and_(cv.c.profile_id == pid, cv.c.key == key, cv.c.workspace_id == self.ws)
        )

    def with_refs(self, src: Any, pid: Any, filters: Sequence[Filter]) -> Any:
        """`src` (events) joined on canonical id `pid` to the traits pass and to the stored
        computed values that `filters` compare against, only those: otherwise every
        event row would carry them."""
        if self.t is not None and any(isinstance(f.ref, TraitRef) for f in filters):
            src = src.outerjoin(self.t, self.t.c.pid == pid)
        keys = sorted({f.ref.computed for f in filters if isinstance(f.ref, ComputedRef)})
        for key in keys:
            src = self.join_computed(src, self.computed_refs[key], key, pid)
        return src

    def events_subquery(self) -> Any:
        """One GROUP BY pass counting, per profile, the events of every condition with
        ``count(*) FILTER (WHERE ..)``. Each filter tests the integer window bound
        before the strings (AND stops at the first false), and the name before the type
        (which is nearly always 'track')."""
        ev = events
        cols = []
        # The statement reads only rows of the leaves' (type, name) pairs, so where a
        # name comes with one type only, the name alone tells the row's type: the
        # type test is left out of that name's filters (~7% of the pass at 1M events).
        types: dict[str, set[str]] = {}
        for n in self.event_leaves:
            types.setdefault(n.name, set()).add(n.type)
        for i, node in enumerate(self.event_leaves):
            same_type = [] if len(types[node.name]) == 1 else [ev.c.type == node.type]
            cond = and_(
                _window(ev.c.timestamp_us, node.window, self.at, checked_upto_now=True),
                ev.c.name == node.name,
                *same_type,
                *[self.filter_pred(f, ev.c.properties) for f in node.where],
            )
            # int4: the second level's sum(int4) adds in bigint; sum(bigint) would
            # accumulate in numeric, seconds slower over a million profiles.
            cols.append(cast(func.count().filter(cond), sa.Integer).label(f"c{i}"))
        # Per (type, name): the earliest window start of its conditions (None: one
        # counts all time). An older row counts in no column, so it is left out before
        # the aggregate rather than tested by every filter (with these ten audiences
        # about 40% of the rows: views count over 60 days, adds over 30, of 180).
        # (As microseconds before now: the earliest lower bound is the largest.)
        floors: dict[tuple[str, str], int | None] = {}
        for n in self.event_leaves:
            lo = _offsets(n.window)[0] if n.window is not None else None
            seen = floors.get((n.type, n.name), lo)
            floors[(n.type, n.name)] = None if lo is None or seen is None else max(lo, seen)
        arms = [
            and_(
                ev.c.type == t,
                ev.c.name == name,
                *([ev.c.timestamp_us > self.at(lo)] if lo is not None else []),
            )
            for (t, name), lo in sorted(floors.items())
        ]
        filters = [f for n in self.event_leaves for f in n.where]
        src: Any = ev
        key: Any = ev.c.profile_id
        if any(isinstance(f.ref, TraitRef | ComputedRef) for f in filters):
            # A filter compares against the person's trait or computed value: map each
            # event to its canonical profile first.
            src, key = self.to_canonical(src, ev.c.profile_id)
            src = self.with_refs(src, key, filters)
        where = [ev.c.workspace_id == self.ws, ev.c.timestamp_us <= self.at(0), or_(*arms)]
        where += self.in_scope(ev.c.profile_id)
        if all(n.window is not None for n in self.event_leaves):
            # No condition counts events at or before the earliest window start: those
            # rows (and partitions) need not be read at all.
            floor = max(_offsets(n.window)[0] for n in self.event_leaves if n.window)
            where.append(ev.c.timestamp_us > self.at(floor))
        # Grouped by the events' own profile id (the planner knows how many there are,
        # so it hashes instead of sorting millions of rows). The few merged profiles'
        # counts are summed per survivor separately (``merged_counts``) and added at the
        # join to the universe: folding them in by grouping the whole rollup a second
        # time cost a hash aggregate of a row per profile.
        own = sa.select(key.label("own"), *cols).select_from(src).where(*where).group_by(key)
        return own.cte("e_own")

    def merged_counts(self, own: Any) -> Any:
        """The counts of `own` (``events_subquery``) of merged-away profiles, summed per
        survivor: a handful of rows, joined to the universe next to `own`."""
        p = profiles.alias("merged_e")
        sums = [
            cast(func.sum(getattr(own.c, f"c{i}")), sa.BigInteger).label(f"c{i}")
            for i in range(len(self.event_leaves))
        ]
        return (
            sa.select(p.c.canonical_id.label("pid"), *sums)
            .select_from(own.join(p, p.c.profile_id == own.c.own))
            .where(p.c.workspace_id == self.ws, merged_away(p))
            .group_by(p.c.canonical_id)
            .subquery("e_merged")
        )

    # -- tree

    def collect(self, node: Node) -> None:
        """Register ``node``'s event conditions and computed keys. Event conditions
        counting the same events share one column, across every audience compiled
        together."""
        for n in iter_nodes(node):
            if isinstance(n, Account):
                raise UnsupportedInSQL("account-level audiences are compiled by sql_accounts.py")
            if isinstance(n, ContextCondition):
                # The request a context condition reads exists only inside GetProfile:
                # the API refuses these in stored audiences, so reaching here is a bug.
                raise UnsupportedInSQL(
                    "context conditions are evaluated per request by the profile service;"
                    " they have no stored members"
                )
            if isinstance(n, Event) and _event_key(n) not in self.event_cols:
                self.event_cols[_event_key(n)] = f"c{len(self.event_leaves)}"
                self.event_leaves.append(n)
            if isinstance(n, Computed) and n.key not in self.computed:
                self.computed[n.key] = seg.computed_trait_values.alias(f"cv{len(self.computed)}")
            self.register_computed_refs(node_filters(n))

    def sources(self, nodes: Sequence[Node]) -> Any:
        """The universe joined to the events rollup, the traits pass and the computed
        values that ``nodes`` (already collected) read."""
        self.u = self.universe()
        keys = sorted({k for n in nodes for t in trait_refs(n) for k in trait_row_keys(t)})
        src = self.u
        if keys and self._events_read_traits(nodes):
            # An event filter compares against a trait: the events join the traits
            # pass by canonical id (``with_refs``), so it covers every profile.
            self.t = self.traits_subquery(keys)
        if self.event_leaves:
            self.e = self.events_subquery()
            self.em = self.merged_counts(self.e)
            src = src.outerjoin(self.e, self.e.c.own == self.u.c.pid)
            src = src.outerjoin(self.em, self.em.c.pid == self.u.c.pid)
        if self.t is not None:
            src = src.outerjoin(self.t, self.t.c.pid == self.u.c.pid)
        elif keys:
            src = self.own_traits(src, keys)
        # Computed values that filters compare with join here too: funnels with step
        # references read them from inside their correlated EXISTS.
        for key, cv in [*self.computed.items(), *self.computed_refs.items()]:
            src = self.join_computed(src, cv, key, self.u.c.pid)
        return src

    @staticmethod
    def _events_read_traits(nodes: Sequence[Node]) -> bool:
        """Whether an event or funnel step filter of `nodes` compares against a trait."""
        filters = [f for node in nodes for n in iter_nodes(node) for f in node_filters(n)]
        return any(isinstance(f.ref, TraitRef) for f in filters)

    def compile(self, node: Node) -> Select[Any]:
        self.collect(node)
        src = self.sources([node])
        return sa.select(self.u.c.pid).select_from(src).where(self.node(node))

    def compile_many(self, nodes: Sequence[Node]) -> Select[Any]:
        for node in nodes:
            self.collect(node)
        src = self.sources(nodes)
        flags = [null_free(self.node(n)).label(f"a{i}") for i, n in enumerate(nodes)]
        # OFFSET 0 keeps the planner from copying every tree into the outer WHERE too
        # (evaluating each twice per profile).
        rows = sa.select(self.u.c.pid, *flags).select_from(src).offset(0).subquery("rollup")
        cols = [getattr(rows.c, f"a{i}") for i in range(len(nodes))]
        return sa.select(rows.c.pid, *cols).where(or_(*cols))

    def node(self, n: Node) -> ColumnElement[bool]:
        d = self.d
        combined = boolean_node(n, self.node)
        if combined is not None:
            return combined
        if isinstance(n, Event):
            col = self.event_cols[_event_key(n)]
            cnt = func.coalesce(getattr(self.e.c, col), 0) + func.coalesce(
                getattr(self.em.c, col), 0
            )
            return null_free(compare(cnt, n.count.op, literal(n.count.value, sa.BigInteger)))
        if isinstance(n, Trait):
            return null_free(match_literal(d, self.trait_value(n.name), n.op, n.value))
        if isinstance(n, Computed):
            return null_free(
                match_literal(d, self.stored_value(self.computed[n.key]), n.op, n.value)
            )
        if isinstance(n, AudienceRef):
            return self.audience_ref(n.key)
        if isinstance(n, Prediction):
            return self.prediction(n)
        if isinstance(n, Funnel):
            return self.funnel(n)
        raise UnsupportedInSQL(f"cannot compile {type(n).__name__}")

    def audience_ref(self, key: str) -> ColumnElement[bool]:
        m, a, p = seg.memberships, seg.audiences, profiles.alias("pm")
        sub = (
            sa.select(literal(1))
            .select_from(
                m.join(a, a.c.audience_id == m.c.audience_id).join(
                    p, p.c.profile_id == m.c.profile_id
                )
            )
            .where(
                a.c.workspace_id == self.ws,
                a.c.key == key,
                a.c.deleted_at_us.is_(None),
                m.c.workspace_id == self.ws,
                p.c.workspace_id == self.ws,
                p.c.canonical_id == self.u.c.pid,
            )
            .correlate_except(m, a, p)
        )
        return null_free(sub.exists())

    def prediction(self, n: Prediction) -> ColumnElement[bool]:
        s, p = seg.prediction_scores, profiles.alias("pp")
        col = getattr(s.c, n.metric)
        sub = (
            sa.select(literal(1))
            .select_from(s.join(p, p.c.profile_id == s.c.profile_id))
            .where(
                s.c.workspace_id == self.ws,
                s.c.key == n.key,
                p.c.workspace_id == self.ws,
                p.c.canonical_id == self.u.c.pid,
                *[compare(col, op, literal(v, sa.Float)) for op, v in n.bounds],
            )
            .correlate_except(s, p)
        )
        return null_free(sub.exists())

    def funnel(self, n: Funnel) -> ColumnElement[bool]:
        """Funnels without step references take one ordered pass per profile
        (``_funnel_scan``); with references a later candidate may be needed, so they keep
        the declarative search (``_funnel_exists``)."""
        if any(isinstance(f.ref, StepRef) for s in n.steps for f in s.where):
            return self._funnel_exists(n)
        return self._funnel_scan(n)

    def _funnel_scan(self, n: Funnel) -> ColumnElement[bool]:
        """Earliest completion by dynamic programming over window functions.

        One pass over the step events of the workspace (``s{i}``: the row passes step i's
        filters; step 0 also needs the window), then for j = k-2 .. 0 one window level::

            g{j} = MIN(CASE WHEN s{j+1} THEN g{j+1} END)
                   OVER (PARTITION BY pid ORDER BY t DESC
                         RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)

        with ``g{k-1} = t``: the earliest time a chain whose step j is at time t can end,
        over step events strictly later (integer microseconds, so "t + 1 and later").
        Without step references any later step event is acceptable, so this minimum is
        exact, and a first-step event completes iff ``g0 <= t0 + within``. The frame is
        anchored at the partition start (descending order), so each level is a running
        MIN: linear per profile, and every level shares one sort order.
        """
        k = len(n.steps)
        ev = events
        tag = f"fn{self.funnels}"
        self.funnels += 1
        flags = []
        for i, s in enumerate(n.steps):
            conds = [ev.c.type == s.type, ev.c.name == s.name]
            if i == 0 and n.window is not None:
                conds.append(_window(ev.c.timestamp_us, n.window, self.at))
            conds += [self.filter_pred(f, ev.c.properties) for f in s.where]
            flags.append(null_free(and_(*conds)).label(f"s{i}"))
        names = sorted({(s.type, s.name) for s in n.steps})
        src, pid = self.to_canonical(ev, ev.c.profile_id)
        src = self.with_refs(src, pid, [f for s in n.steps for f in s.where])
        where = [
            ev.c.workspace_id == self.ws,
            ev.c.timestamp_us <= self.at(0),
            or_(*[and_(ev.c.type == t, ev.c.name == nm) for t, nm in names]),
            *self.in_scope(ev.c.profile_id),
        ]
        if n.window is not None:
            # Every step of a chain is later than its first step, which is inside the
            # window: older step events can neither start nor continue a chain, and the
            # levels below only look at later rows, so they are left out of the sort.
            where.append(ev.c.timestamp_us > self.at(_offsets(n.window)[0]))
        base = (
            sa.select(
                pid.label("pid"),
                ev.c.timestamp_us.label("t"),
                *flags,
                ev.c.timestamp_us.label(f"g{k - 1}"),
            )
            .select_from(src)
            .where(*where)
            .subquery(f"{tag}_{k - 1}")
        )
        cur = base
        for j in range(k - 2, -1, -1):
            nxt = getattr(cur.c, f"g{j + 1}")
            g = func.min(case((getattr(cur.c, f"s{j + 1}"), nxt))).over(
                partition_by=cur.c.pid, order_by=cur.c.t.desc(), range_=(None, -1)
            )
            keep = [cur.c.pid, cur.c.t] + [getattr(cur.c, f"s{i}") for i in range(j + 1)]
            cur = sa.select(*keep, g.label(f"g{j}")).subquery(f"{tag}_{j}")
        done = and_(cur.c.g0.is_not(None), cur.c.g0 <= cur.c.t + n.within_us)
        hits = sa.select(cur.c.pid).where(cur.c.s0, done if n.completed else not_(done))
        return null_free(self.u.c.pid.in_(hits.scalar_subquery()))

    def _funnel_exists(self, n: Funnel) -> ColumnElement[bool]:
        """A chain from e0 exists iff step events e1..ek exist with strictly increasing
        timestamps, the last within S of e0, each passing its step's filters (which may
        read earlier chosen events): the reference's search, stated declaratively.

        Shape: ``EXISTS (e0 of this profile, in the window, AND [NOT] EXISTS (e1..ek
        joined flat))``. Each subquery references only its immediate parent, so Postgres
        turns both into hash semi/anti joins instead of per-row subplans.
        """
        k = len(n.steps)
        evs = [events.alias(f"f{i}") for i in range(k)]
        fps = [profiles.alias(f"fp{i}") for i in range(k)]
        within = n.within_us

        pg = self.d.name == "postgresql"

        def step_conds(i: int) -> list[ColumnElement[bool]]:
            e, p, s = evs[i], fps[i], n.steps[i]
            conds = [e.c.workspace_id == self.ws]
            if pg:
                conds += [p.c.profile_id == e.c.profile_id, p.c.workspace_id == self.ws]
                conds.append(
                    p.c.canonical_id == (self.u.c.pid if i == 0 else fps[0].c.canonical_id)
                )
            else:
                # SQLite plans per outer row: hand it the profile's rows (itself and those
                # merged into it) as an IN list so it starts from ix_events_profile_time;
                # type/name are kept off ix_events_name_time, which it would otherwise
                # walk for every profile for lack of statistics.
                mine = (
                    sa.select(p.c.profile_id)
                    .where(p.c.workspace_id == self.ws, p.c.canonical_id == self.u.c.pid)
                    .correlate(self.u)
                )
                conds.append(e.c.profile_id.in_(mine))
            conds += [
                _noindex(e.c.type) == s.type,
                _noindex(e.c.name) == s.name,
                e.c.timestamp_us <= self.at(0),
            ]
            if i == 0:
                if n.window is not None:
                    conds.append(_window(e.c.timestamp_us, n.window, self.at))
            else:
                conds += [
                    # Always true (both are this workspace); states the link between the
                    # step tables so SQLAlchemy's cartesian-product lint stays quiet.
                    e.c.workspace_id == evs[i - 1].c.workspace_id,
                    e.c.timestamp_us > evs[i - 1].c.timestamp_us,
                    e.c.timestamp_us <= evs[0].c.timestamp_us + within,
                ]
            conds += [self.filter_pred(f, e.c.properties, evs) for f in s.where]
            return conds

        def tables(idx: range) -> list[Any]:
            return [t for i in idx for t in ((evs[i], fps[i]) if pg else (evs[i],))]

        later = tables(range(1, k))
        rest = (
            sa.select(literal(1))
            .select_from(*later)
            .where(*[c for i in range(1, k) for c in step_conds(i)])
            .correlate_except(*later)
            .exists()
        )
        head = (
            sa.select(literal(1))
            .select_from(*tables(range(1)))
            .where(*step_conds(0), rest if n.completed else not_(rest))
            .correlate_except(*tables(range(1)))
        )
        return null_free(head.exists())


def _as_node(definition: Node | Mapping[str, Any]) -> Node:
    return parse_audience(definition) if isinstance(definition, Mapping) else definition


def compile_audience(
    definition: Node | Mapping[str, Any], *, workspace_id: str, now_us: int, dialect: str
) -> Select[Any]:
    """A SELECT of the canonical profile ids (column ``pid``) matching ``definition`` at
    ``now_us`` among the alive canonical profiles of ``workspace_id``.

    Audience references read ``memberships`` (per audience key via ``audiences``),
    computed conditions ``computed_trait_values`` and predictions ``prediction_scores``:
    the caller keeps those current (evaluate dependencies first).
    """
    return _AudienceCompiler(_dialect(dialect), workspace_id, now_us).compile(_as_node(definition))


def compile_audiences(
    definitions: Sequence[Node | Mapping[str, Any]],
    *,
    workspace_id: str,
    now_us: int,
    dialect: str,
    profile_ids: Sequence[int] | None = None,
) -> Select[Any]:
    """Several audiences in one statement: a row (``pid``, ``a0`` .. ``a{n-1}``) per
    alive canonical profile matching at least one definition, ``a{i}`` telling whether it
    matches ``definitions[i]``.

    All event conditions of all definitions (identical ones once) are counted in ONE
    aggregate pass over the events and all trait keys in one pass over the traits; each
    audience is then its boolean tree over that rollup. Audience references read
    ``memberships`` as ``compile_audience`` does, so an audience must not be compiled
    together with one it references (see ``language.dependency_layers``).

    ``profile_ids`` restricts the evaluation to those canonical profiles (the same
    answer for each of them as without it; the realtime worker's re-evaluation).
    """
    if not definitions:
        raise ValueError("no definitions to compile")
    c = _AudienceCompiler(_dialect(dialect), workspace_id, now_us, profile_ids)
    return c.compile_many([_as_node(d) for d in definitions])


@dataclass(frozen=True)
class Prepared:
    """A statement built once for a set of definitions and run for any instant and any
    profiles (the realtime worker's batches): only its parameters change, so neither
    the statement nor SQLAlchemy's cache key of it (memoized on the object) is built
    again. The SQL is that of the unprepared statement of the same definitions."""

    statement: Select[Any]
    # The instants it compares with, as microseconds before now.
    before: frozenset[int]

    def params(self, now_us: int, profile_ids: Sequence[int]) -> dict[str, Any]:
        """The parameter values evaluating at `now_us` for the canonical `profile_ids`."""
        out: dict[str, Any] = {
            _now_param(now_us, before).key: now_us - before for before in self.before
        }
        out[SCOPE_PARAM] = sorted(set(profile_ids))
        return out


def prepare_audiences(
    definitions: Sequence[Node | Mapping[str, Any]], *, workspace_id: str, dialect: str
) -> Prepared:
    """``compile_audiences`` restricted to some profiles, for any instant and profiles
    (`Prepared.params`)."""
    if not definitions:
        raise ValueError("no definitions to compile")
    c = _AudienceCompiler(_dialect(dialect), workspace_id, 0, [0])
    return Prepared(c.compile_many([_as_node(d) for d in definitions]), frozenset(c.before))


# Session settings of batch evaluation on Postgres (SET LOCAL: they end with the
# transaction). Measured at 1M/10M events on 2 cores (docs/benchmarks.md):
# - work_mem: the rollup's hash aggregate (a row of counts per profile) and the funnel's
#   sort stay in memory instead of spilling in batches to disk under the default 4 MB.
# - jit: PG15 compiles the big expression lists of the rollup to machine code on every
#   run, which costs more than it saves at these sizes.
BATCH_SETTINGS: dict[str, str] = {"work_mem": "256MB", "jit": "off"}


async def batch_settings(conn: AsyncConnection) -> None:
    """Apply ``BATCH_SETTINGS`` to the transaction of `conn` (Postgres only)."""
    if conn.dialect.name != "postgresql":
        return
    for name, value in BATCH_SETTINGS.items():
        await conn.execute(
            sa.text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value}
        )


async def evaluate_audiences(
    conn: AsyncConnection,
    definitions: Sequence[Node | Mapping[str, Any]],
    *,
    workspace_id: str,
    now_us: int,
) -> list[set[int]]:
    """Run ``compile_audiences`` on ``conn``; the member ids of each definition, in order."""
    if not definitions:
        return []
    q = compile_audiences(
        definitions, workspace_id=workspace_id, now_us=now_us, dialect=conn.dialect.name
    )
    await batch_settings(conn)
    out: list[set[int]] = [set() for _ in definitions]
    for row in (await conn.execute(q)).all():
        for i, member in enumerate(row[1:]):
            if member:
                out[i].add(row[0])
    return out


async def evaluate_audience(
    conn: AsyncConnection, definition: Node | Mapping[str, Any], *, workspace_id: str, now_us: int
) -> set[int]:
    """Run ``compile_audience`` on ``conn``; the set of member profile ids."""
    q = compile_audience(
        definition, workspace_id=workspace_id, now_us=now_us, dialect=conn.dialect.name
    )
    await batch_settings(conn)
    return {row[0] for row in (await conn.execute(q)).all()}


# --------------------------------------------------------------------------- computed traits


def compile_computed_trait(
    definition: ComputedTraitDef | Mapping[str, Any],
    *,
    workspace_id: str,
    now_us: int,
    dialect: str,
    profile_ids: Sequence[int] | None = None,
) -> Select[Any]:
    """A SELECT of ``(profile_id, value)`` for every alive canonical profile of the
    workspace (of ``profile_ids`` when given); ``value`` comes back JSON-compatible
    (numbers, strings, lists, None)."""
    return _computed_trait(definition, workspace_id, now_us, dialect, profile_ids)[0]


def prepare_computed_trait(
    definition: ComputedTraitDef | Mapping[str, Any], *, workspace_id: str, dialect: str
) -> Prepared:
    """``compile_computed_trait`` restricted to some profiles, for any instant and
    profiles (`Prepared.params`; `run_computed_trait` runs it)."""
    statement, comp = _computed_trait(definition, workspace_id, 0, dialect, [0])
    return Prepared(statement, frozenset(comp.before))


def _computed_trait(
    definition: ComputedTraitDef | Mapping[str, Any],
    workspace_id: str,
    now_us: int,
    dialect: str,
    profile_ids: Sequence[int] | None,
) -> tuple[Select[Any], _AudienceCompiler]:
    defn = parse_computed_trait(definition) if isinstance(definition, Mapping) else definition
    d = _dialect(dialect)
    comp = _AudienceCompiler(d, workspace_id, now_us, profile_ids)
    u = comp.universe()
    ev = events
    src: Any = ev.join(profiles, profiles.c.profile_id == ev.c.profile_id)
    trait_names = computed_trait_refs(defn)
    if trait_names:
        # A filter compares with the person's trait: the events join the traits pass
        # (the latest value per key across the merged set) on their canonical id.
        comp.t = comp.traits_subquery(sorted({k for t in trait_names for k in trait_row_keys(t)}))
    # And with the person's stored values of the computed traits it references, which
    # the caller evaluated first (``language.dependency_order``).
    comp.register_computed_refs(defn.where)
    src = comp.with_refs(src, profiles.c.canonical_id, defn.where)
    conds = [
        ev.c.workspace_id == workspace_id,
        ev.c.type == defn.event_type,
        ev.c.name == defn.event,
        _window(ev.c.timestamp_us, defn.window, comp.at),
        *[comp.filter_pred(f, ev.c.properties) for f in defn.where],
        *comp.in_scope(ev.c.profile_id),
    ]
    pid = profiles.c.canonical_id.label("pid")
    t = defn.type

    if t == "event_count":
        agg = (
            sa.select(pid, func.count().label("v"))
            .select_from(src)
            .where(*conds)
            .group_by(profiles.c.canonical_id)
        )
        a = agg.subquery("a")
        return _final(u, a, func.coalesce(a.c.v, 0)), comp

    assert defn.property is not None
    pv = d.prop(ev.c.properties, defn.property)
    # Level 0: the matching events that have the property, with the property as JSON.
    base_cols = [pid, ev.c.timestamp_us.label("ts"), ev.c.seq.label("seq")]
    if d.name == "postgresql":
        base_cols.append(pv.expr.label("val"))
    else:
        base_cols.append(d.json_text(pv).label("val"))
    base = sa.select(*base_cols).select_from(src).where(*conds, d.present(pv)).subquery("b")
    v = JV(base.c.val) if d.name == "postgresql" else d.decode(base.c.val)

    if t in ("sum", "avg", "min", "max"):
        num = case((d.is_kind(v, "number"), d.num(v)))
        fn: Any = {"sum": func.sum, "avg": func.avg, "min": func.min, "max": func.max}[t]
        a = sa.select(base.c.pid, d.to_float(fn(num)).label("v")).group_by(base.c.pid).subquery("a")
        return _final(u, a, func.coalesce(a.c.v, 0) if t == "sum" else a.c.v), comp

    if t in ("first", "last"):
        enc = d.c(d.pad(base.c.ts) + d.pad(base.c.seq) + d.json_text(v))
        fn = func.min if t == "first" else func.max
        a = sa.select(base.c.pid, fn(enc).label("v")).group_by(base.c.pid).subquery("a")
        return _final(u, a, d.json_result(func.substr(a.c.v, 41))), comp

    # Distinct values per profile. Grouping by the JSON value itself (jsonb equality on
    # Postgres; type class + extracted value on SQLite) makes 1 and 1.0 one value.
    if d.name == "postgresql":
        gkeys: list[Any] = [base.c.val]
        vtext: ColumnElement[Any] = cast(base.c.val, Text)
    else:
        assert isinstance(d, _SQLite)
        gkeys = [d.kind_of(func.json_type(base.c.val, "$")), func.json_extract(base.c.val, "$")]
        vtext = func.max(base.c.val)
    if t == "unique_count":
        g = sa.select(base.c.pid).group_by(base.c.pid, *gkeys).subquery("g")
        a = sa.select(g.c.pid, func.count().label("v")).group_by(g.c.pid).subquery("a")
        return _final(u, a, func.coalesce(a.c.v, 0)), comp
    if t == "most_frequent":
        latest = func.max(d.c(d.pad(base.c.ts) + d.pad(base.c.seq)))
        g = (
            sa.select(
                base.c.pid,
                func.count().label("n"),
                latest.label("latest"),
                vtext.label("vt"),
            )
            .group_by(base.c.pid, *gkeys)
            .subquery("g")
        )
        # Most occurrences first, then the latest last occurrence: one MAX over
        # count || latest || value.
        enc = d.c(d.pad(g.c.n) + g.c.latest + g.c.vt)
        a = sa.select(g.c.pid, func.max(enc).label("v")).group_by(g.c.pid).subquery("a")
        return _final(u, a, d.json_result(func.substr(a.c.v, 61))), comp
    if t == "unique_list":
        if d.name == "postgresql":
            g = (
                sa.select(base.c.pid, base.c.val.label("val"))
                .group_by(base.c.pid, base.c.val)
                .subquery("g")
            )
            gv = JV(g.c.val)
            gtext: ColumnElement[Any] = cast(g.c.val, Text)
        else:
            g = sa.select(base.c.pid, vtext.label("val")).group_by(base.c.pid, *gkeys).subquery("g")
            gv = d.decode(g.c.val)
            gtext = g.c.val
        rank, num, txt = d.sort_keys(gv)
        ranked = sa.select(
            g.c.pid,
            gtext.label("vt"),
            func.row_number().over(partition_by=g.c.pid, order_by=[rank, num, txt]).label("rn"),
        ).subquery("r")
        # The aggregate runs as a window ordered by rank, so the list is ascending on
        # both dialects (SQLite before 3.44 has no ORDER BY inside aggregates).
        lst = d.group_array(ranked.c.vt).over(
            partition_by=ranked.c.pid, order_by=ranked.c.rn, rows=(None, None)
        )
        top = (
            sa.select(ranked.c.pid, lst.label("v"), ranked.c.rn)
            .where(ranked.c.rn <= UNIQUE_LIST_LIMIT)
            .subquery("l")
        )
        a = sa.select(top.c.pid, top.c.v).where(top.c.rn == 1).subquery("a")
        return _final(u, a, d.json_result(a.c.v)), comp
    raise ValueError(f"unknown computed trait type {t!r}")


def _final(u: Any, a: Any, value: Any) -> Select[Any]:
    return (
        sa.select(u.c.pid.label("profile_id"), value.label("value"))
        .select_from(u.outerjoin(a, a.c.pid == u.c.pid))
        .order_by(u.c.pid)
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


async def evaluate_computed_trait(
    conn: AsyncConnection,
    definition: ComputedTraitDef | Mapping[str, Any],
    *,
    workspace_id: str,
    now_us: int,
    profile_ids: Sequence[int] | None = None,
) -> dict[int, Any]:
    """Run ``compile_computed_trait`` on ``conn``: profile id -> JSON-compatible value."""
    q = compile_computed_trait(
        definition,
        workspace_id=workspace_id,
        now_us=now_us,
        dialect=conn.dialect.name,
        profile_ids=profile_ids,
    )
    await batch_settings(conn)
    return {row[0]: _jsonable(row[1]) for row in (await conn.execute(q)).all()}


async def run_computed_trait(
    conn: AsyncConnection, prepared: Prepared, *, now_us: int, profile_ids: Sequence[int]
) -> dict[int, Any]:
    """Run a ``prepare_computed_trait`` statement at `now_us` for the canonical
    `profile_ids` (the caller applied ``batch_settings``): profile id -> value."""
    rows = await conn.execute(prepared.statement, prepared.params(now_us, profile_ids))
    return {row[0]: _jsonable(row[1]) for row in rows.all()}
