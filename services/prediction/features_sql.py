"""Point-in-time features and labels, computed in the database.

One statement per snapshot computes every feature of every profile at a cutoff (one
GROUP BY pass over the events at or before it, ``count(*) FILTER (WHERE ..)`` per
counted event and window); one statement finds the profiles that performed the goal in
``(cutoff, cutoff + horizon]``. Nothing is computed per profile in Python: the rows go
straight into NumPy arrays. Events count for the canonical profile (merges resolved
through ``profiles.canonical_id``). Features see only ``timestamp_us <= cutoff``, labels
only ``timestamp_us > cutoff``, so no feature can be computed from the label period.

Goal filters follow the audience language's semantics (docs/audiences.md, "filters")
for literal values, on Postgres (JSONB) and SQLite (JSON1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import ColumnElement, and_, case, cast, func, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from services.prediction.features import (
    MAX_EVENT_NAMES,
    REVENUE_PROPERTY,
    WINDOW_DAYS,
    FeatureSpec,
)
from services.prediction.model import Goal, GoalFilter
from services.shared.clock import US_PER_DAY
from services.shared.db.tables import events, profiles

_EVENT_TYPES = ("track", "page", "screen")

# The population audience's members, read by name: the audiences and memberships tables
# are segmentation's, and this service imports no other service's package.
_audiences = sa.table(
    "audiences",
    sa.column("audience_id", sa.BigInteger),
    sa.column("workspace_id", sa.String),
    sa.column("key", sa.String),
    sa.column("deleted_at_us", sa.BigInteger),
)
_memberships = sa.table(
    "memberships",
    sa.column("audience_id", sa.BigInteger),
    sa.column("workspace_id", sa.String),
    sa.column("profile_id", sa.BigInteger),
)


class _Json:
    """A JSON value inside ``events.properties`` at a dotted path, per dialect: its type
    (string, number, boolean, array, object; SQL NULL when missing or null), its text
    and its number."""

    def __init__(self, dialect: str, path: str) -> None:
        self.postgres = dialect == "postgresql"
        keys = path.split(".")
        if self.postgres:
            value: Any = events.c.properties
            # Chained -> never indexes into arrays: dotted paths follow object keys only.
            for k in keys:
                value = value.op("->", return_type=JSONB)(literal(k, sa.String))
            self.value = value
            kind = func.jsonb_typeof(value)
            self.kind: Any = case((kind == "null", None), else_=kind)
            self.text: Any = value.op("#>>", return_type=sa.Text)(sa.literal_column("'{}'"))
        else:
            self.path = "$" + "".join(f'."{k}"' for k in keys)
            raw_kind = func.json_type(events.c.properties, self.path)
            self.kind = case(
                (raw_kind == "text", "string"),
                (raw_kind.in_(["integer", "real"]), "number"),
                (raw_kind.in_(["true", "false"]), "boolean"),
                (raw_kind.in_(["array", "object"]), raw_kind),
            )
            self.text = case(
                (raw_kind == "true", "true"),
                (raw_kind == "false", "false"),
                else_=cast(func.json_extract(events.c.properties, self.path), sa.Text),
            )
            self.raw_kind = raw_kind

    def number(self) -> Any:
        # CASE fixes the evaluation order: the cast never sees a non-number.
        return case((self.kind == "number", cast(self.text, sa.Float)))

    def equals(self, value: Any) -> ColumnElement[bool]:
        """Equality by JSON type: 1 equals 1.0, "1" never equals 1, true is no number."""
        if isinstance(value, bool):
            return and_(self.kind == "boolean", self.text == ("true" if value else "false"))
        if isinstance(value, int | float):
            return self.number() == literal(float(value), sa.Float)
        return and_(self.kind == "string", self.text == literal(value, sa.String))

    def array_has(self, value: Any) -> ColumnElement[bool]:
        if self.postgres:
            return and_(
                self.kind == "array",
                self.value.op("@>", return_type=sa.Boolean)(func.jsonb_build_array(literal(value))),
            )
        item = func.json_each(events.c.properties, self.path).table_valued("value", "type")
        if isinstance(value, bool):
            match = item.c.type == ("true" if value else "false")
        elif isinstance(value, int | float):
            match = and_(item.c.type.in_(["integer", "real"]), item.c.value == value)
        else:
            match = and_(item.c.type == "text", item.c.value == value)
        return and_(self.kind == "array", select(1).select_from(item).where(match).exists())


def _filter(dialect: str, f: GoalFilter) -> ColumnElement[bool]:
    v = _Json(dialect, f.property)
    present = v.kind.is_not(None)
    if f.op == "exists":
        return present
    if f.op == "not_exists":
        return v.kind.is_(None)
    if f.op == "eq":
        return v.equals(f.value)
    if f.op == "neq":
        # A missing value matches neq (docs/audiences.md, "operators").
        return or_(v.kind.is_(None), ~v.equals(f.value))
    if f.op in ("in", "not_in"):
        any_of = or_(*(v.equals(x) for x in f.value)) if f.value else sa.false()
        return any_of if f.op == "in" else or_(v.kind.is_(None), ~any_of)
    if f.op == "starts_with":
        return and_(v.kind == "string", func.substr(v.text, 1, len(f.value)) == f.value)
    if f.op == "contains":
        on_array = v.array_has(f.value)
        if not isinstance(f.value, str):
            return on_array
        substring = and_(v.kind == "string", func.instr(v.text, f.value) > 0)
        if dialect == "postgresql":
            substring = and_(v.kind == "string", func.strpos(v.text, f.value) > 0)
        return or_(substring, on_array)
    number = v.number()
    bound = literal(float(f.value), sa.Float)
    return {
        "gt": number > bound,
        "gte": number >= bound,
        "lt": number < bound,
        "lte": number <= bound,
    }[f.op]


class FeatureQueries:
    """The feature and label statements of one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def _scope(self, ws: str, population: str | None) -> list[ColumnElement[bool]]:
        """Events of the workspace (joined to their profile ``p``), of the population."""
        where = [events.c.workspace_id == ws, profiles.c.workspace_id == ws]
        if population is not None:
            mp = profiles.alias("mp")
            members = (
                select(mp.c.canonical_id)
                .select_from(_memberships)
                .join(_audiences, _audiences.c.audience_id == _memberships.c.audience_id)
                .join(mp, mp.c.profile_id == _memberships.c.profile_id)
                .where(
                    _audiences.c.workspace_id == ws,
                    _audiences.c.key == population,
                    _audiences.c.deleted_at_us.is_(None),
                    _memberships.c.workspace_id == ws,
                )
            )
            where.append(profiles.c.canonical_id.in_(members))
        return where

    def _source(self) -> Any:
        return events.join(profiles, profiles.c.profile_id == events.c.profile_id)

    def _revenue(self) -> Any:
        return _Json(self._dialect, REVENUE_PROPERTY).number()

    async def choose_spec(self, ws: str, cutoff_us: int, goal: Goal) -> FeatureSpec:
        """The features of a model trained at `cutoff_us`: the most frequent event names
        of the 90 days before it (and the goal's), revenue when any event has one."""
        since = cutoff_us - 90 * US_PER_DAY
        top = (
            select(events.c.type, events.c.name)
            .where(
                events.c.workspace_id == ws,
                events.c.type.in_(_EVENT_TYPES),
                events.c.name.is_not(None),
                events.c.timestamp_us > since,
                events.c.timestamp_us <= cutoff_us,
            )
            .group_by(events.c.type, events.c.name)
            .order_by(func.count().desc(), events.c.type, events.c.name)
            .limit(MAX_EVENT_NAMES)
        )
        revenue = (
            select(literal(1))
            .where(
                events.c.workspace_id == ws,
                events.c.timestamp_us <= cutoff_us,
                self._revenue().is_not(None),
            )
            .limit(1)
        )
        async with self._engine.connect() as c:
            keys = [(r.type, r.name) for r in await c.execute(top)]
            has_revenue = (await c.execute(revenue)).first() is not None
        if ("track", goal.event) not in keys:
            keys.append(("track", goal.event))
        return FeatureSpec(tuple(sorted(keys)), has_revenue)

    async def features(
        self, ws: str, spec: FeatureSpec, cutoff_us: int, population: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(canonical profile ids, feature matrix) at `cutoff_us` of every profile with an
        event at or before it; columns in ``spec.names()`` order."""
        ts = events.c.timestamp_us
        columns: list[Any] = []
        for kind, name in spec.event_keys:
            for days in WINDOW_DAYS:
                cond = and_(
                    ts > cutoff_us - days * US_PER_DAY,
                    events.c.name == name,
                    events.c.type == kind,
                )
                columns.append(func.count().filter(cond))
        columns += [
            func.max(ts),  # recency, from the latest event
            func.count(),  # frequency
            func.min(ts),  # tenure, from the first event
            func.count(sa.distinct(ts // US_PER_DAY)),  # active days
        ]
        if spec.has_revenue:
            revenue = self._revenue()
            columns += [
                func.coalesce(func.sum(revenue), 0.0),
                func.coalesce(
                    func.sum(case((ts > cutoff_us - 90 * US_PER_DAY, revenue))),
                    0.0,
                ),
            ]
        query = (
            select(profiles.c.canonical_id, *columns)
            .select_from(self._source())
            .where(
                *self._scope(ws, population),
                events.c.type.in_(_EVENT_TYPES),
                ts <= cutoff_us,
            )
            .group_by(profiles.c.canonical_id)
            .order_by(profiles.c.canonical_id)
        )
        async with self._engine.connect() as c:
            rows = (await c.execute(query)).all()
        width = len(spec.names())
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, width))
        table = np.array(rows, dtype=np.float64)
        ids = table[:, 0].astype(np.int64)
        matrix = table[:, 1:]
        rfm = len(spec.event_keys) * len(WINDOW_DAYS)
        matrix[:, rfm] = (cutoff_us - matrix[:, rfm]) / US_PER_DAY
        matrix[:, rfm + 2] = (cutoff_us - matrix[:, rfm + 2]) / US_PER_DAY
        return ids, matrix

    async def goal_performers(
        self, ws: str, goal: Goal, after_us: int, until_us: int, population: str | None
    ) -> np.ndarray:
        """Canonical ids of the profiles that performed `goal` in (after_us, until_us]."""
        query = (
            select(profiles.c.canonical_id)
            .select_from(self._source())
            .where(
                *self._scope(ws, population),
                events.c.type == "track",
                events.c.name == goal.event,
                events.c.timestamp_us > after_us,
                events.c.timestamp_us <= until_us,
                *[_filter(self._dialect, f) for f in goal.where],
            )
            .distinct()
        )
        async with self._engine.connect() as c:
            found = [r[0] for r in await c.execute(query)]
        return np.array(sorted(found), dtype=np.int64)


def label_vector(ids: np.ndarray, performers: Sequence[int] | np.ndarray) -> np.ndarray:
    """1.0 for each of `ids` among `performers`, else 0.0 (vectorised)."""
    return np.isin(ids, np.asarray(performers, dtype=np.int64)).astype(np.float64)
