"""Point-in-time features and labels, computed in the database.

One statement per snapshot computes every feature of every profile at a cutoff (one
GROUP BY pass over the events at or before it, ``count(*) FILTER (WHERE ..)`` per
counted event and window); one statement finds the profiles that performed the goal in
``(cutoff, cutoff + horizon]``. Nothing is computed per profile in Python: the rows go
straight into NumPy arrays. Events count for the canonical profile (merges resolved
through ``profiles.canonical_id``). Features see only ``timestamp_us <= cutoff``, labels
only ``timestamp_us > cutoff``, so no feature can be computed from the label period.

Goal filters are the audience language's filters with literal values
(docs/audiences.md, "filters"), compiled by ``services.shared.filters_sql`` as
segmentation compiles them, on Postgres (JSONB) and SQLite (JSON1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import ColumnElement, and_, case, cast, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.prediction.features import (
    GAP_FEATURES,
    GOAL_FEATURES,
    MAX_CATEGORIES,
    MAX_EVENT_NAMES,
    MAX_TRAITS,
    MIN_CATEGORY_COUNT,
    MIN_CATEGORY_COVERAGE,
    REVENUE_FEATURES,
    REVENUE_PROPERTY,
    REVENUE_WINDOW_DAYS,
    RFM_FEATURES,
    WINDOW_DAYS,
    FeatureSpec,
    TraitFeature,
)
from services.prediction.model import Goal
from services.shared.clock import US_PER_DAY
from services.shared.db.membership_log import audience_keys_read as audiences
from services.shared.db.membership_log import memberships
from services.shared.db.tables import events, profiles
from services.shared.filters_sql import JV, SQLiteJson, json_dialect, match_literal

_EVENT_TYPES = ("track", "page", "screen")


class FeatureQueries:
    """The feature and label statements of one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._json = json_dialect(self._dialect)

    def _scope(self, ws: str, population: str | None) -> list[ColumnElement[bool]]:
        """Events of the workspace (joined to their profile ``p``), of the population."""
        where = [events.c.workspace_id == ws, profiles.c.workspace_id == ws]
        if population is not None:
            mp = profiles.alias("mp")
            members = (
                select(mp.c.canonical_id)
                .select_from(memberships)
                .join(audiences, audiences.c.audience_id == memberships.c.audience_id)
                .join(mp, mp.c.profile_id == memberships.c.profile_id)
                .where(
                    audiences.c.workspace_id == ws,
                    audiences.c.key == population,
                    audiences.c.deleted_at_us.is_(None),
                    memberships.c.workspace_id == ws,
                )
            )
            where.append(profiles.c.canonical_id.in_(members))
        return where

    def _source(self) -> Any:
        return events.join(profiles, profiles.c.profile_id == events.c.profile_id)

    def _revenue(self) -> Any:
        return self._json.float_num(self._json.prop(events.c.properties, REVENUE_PROPERTY))

    def _trait(self, key: str) -> JV:
        """The value of the top-level trait `key` an identify call set (a literal key:
        a dot in it is part of the name)."""
        return self._json.walk(self._json.document(events.c.traits), [key])

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
        traits = await self._choose_traits(ws, cutoff_us)
        return FeatureSpec(tuple(sorted(keys)), has_revenue, traits, goal.event)

    def _trait_pairs(self) -> tuple[Any, Any, Any]:
        """(FROM clause, key, kind) of every (identify event, trait) pair."""
        if self._dialect == "postgresql":
            kv: Any = func.jsonb_each(events.c.traits).table_valued("key", "value")
            kind: Any = func.jsonb_typeof(kv.c.value)
        else:
            kv = func.json_each(events.c.traits).table_valued("key", "value", "type")
            kind = SQLiteJson().kind_of(kv.c.type)
        return events.join(kv, sa.true()), kv.c.key, kind

    def _identifies(self, ws: str, cutoff_us: int) -> list[ColumnElement[bool]]:
        return [
            events.c.workspace_id == ws,
            events.c.type == "identify",
            events.c.timestamp_us <= cutoff_us,
        ]

    async def _choose_traits(self, ws: str, cutoff_us: int) -> tuple[TraitFeature, ...]:
        """The traits identify calls set most often before the cutoff: numeric ones as
        numbers, string ones as categories when a few values cover most profiles."""
        source, key, kind = self._trait_pairs()
        by_kind = (
            select(key, kind, func.count())
            .select_from(source)
            .where(*self._identifies(ws, cutoff_us), kind.in_(["number", "string"]))
            .group_by(key, kind)
        )
        counts: dict[str, dict[str, int]] = {}
        async with self._engine.connect() as c:
            for k, kd, n in await c.execute(by_kind):
                counts.setdefault(k, {})[kd] = n
            chosen = sorted(counts, key=lambda k: (-sum(counts[k].values()), k))[:MAX_TRAITS]
            traits = []
            for k in sorted(chosen):
                numbers, strings = counts[k].get("number", 0), counts[k].get("string", 0)
                if numbers >= strings:
                    traits.append(TraitFeature(k))
                    continue
                value = self._trait(k)
                text = self._json.text(value)
                top = (
                    select(text, func.count())
                    .where(*self._identifies(ws, cutoff_us), self._json.is_kind(value, "string"))
                    .group_by(text)
                    .order_by(func.count().desc(), text)
                    .limit(MAX_CATEGORIES)
                )
                common = [(v, n) for v, n in await c.execute(top) if n >= MIN_CATEGORY_COUNT]
                if common and sum(n for _, n in common) >= MIN_CATEGORY_COVERAGE * strings:
                    traits.append(TraitFeature(k, tuple(sorted(v for v, _ in common))))
        return tuple(traits)

    async def _trait_columns(
        self, ws: str, spec: FeatureSpec, cutoff_us: int, population: str | None
    ) -> list[list[tuple[int, float | None]]]:
        """Per trait of `spec`, (canonical id, value) of each profile's latest identify
        at or before the cutoff that set it (a category as its code; null as None)."""
        found = []
        async with self._engine.connect() as c:
            for trait in spec.traits:
                value = self._trait(trait.key)
                if trait.categories is None:
                    expr: Any = self._json.float_num(value)
                else:
                    expr = case(
                        *[
                            (self._json.eq_lit(value, name), code)
                            for code, name in enumerate(trait.categories)
                        ]
                    )
                has_key = self._json.is_set(value)
                latest = func.row_number().over(
                    partition_by=profiles.c.canonical_id,
                    order_by=(events.c.timestamp_us.desc(), events.c.seq.desc()),
                )
                ranked = (
                    select(profiles.c.canonical_id.label("pid"), expr.label("v"), latest.label("n"))
                    .select_from(self._source())
                    .where(*self._scope(ws, population), *self._identifies(ws, cutoff_us), has_key)
                    .subquery()
                )
                rows = await c.execute(select(ranked.c.pid, ranked.c.v).where(ranked.c.n == 1))
                found.append([(r.pid, r.v) for r in rows])
        return found

    async def features(
        self, ws: str, spec: FeatureSpec, cutoff_us: int, population: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(canonical profile ids, feature matrix) at `cutoff_us` of every profile with an
        event at or before it; columns in ``spec.names()`` order."""
        ts = events.c.timestamp_us
        day = ts // US_PER_DAY
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
            func.count(sa.distinct(day)),  # active days
        ]
        if spec.goal_event:
            is_goal = and_(events.c.type == "track", events.c.name == spec.goal_event)
            # FILTER, not CASE: only the goal's rows reach the aggregates (and the
            # DISTINCT's sort), not every event as a NULL.
            columns += [
                func.max(ts).filter(is_goal),
                func.count(sa.distinct(day)).filter(is_goal),
            ]
        if spec.has_revenue:
            revenue = self._revenue()
            columns.append(func.coalesce(func.sum(revenue), 0.0))
            for days in REVENUE_WINDOW_DAYS:
                recent = case((ts > cutoff_us - days * US_PER_DAY, revenue))
                columns.append(func.coalesce(func.sum(recent), 0.0))
        where = [*self._scope(ws, population), events.c.type.in_(_EVENT_TYPES), ts <= cutoff_us]
        query = (
            select(profiles.c.canonical_id, *columns)
            .select_from(self._source())
            .where(*where)
            .group_by(profiles.c.canonical_id)
            .order_by(profiles.c.canonical_id)
        )
        async with self._engine.connect() as c:
            rows = (await c.execute(query)).all()
            gaps = (await c.execute(self._gap_query(where))).all() if rows else []
        width = len(spec.names())
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, width))
        table = np.array(rows, dtype=np.float64)
        ids = table[:, 0].astype(np.int64)
        matrix = np.full((len(ids), width), np.nan)
        counted = len(spec.event_keys) * len(WINDOW_DAYS)
        matrix[:, :counted] = table[:, 1 : counted + 1]
        latest, frequency, first, active = (table[:, counted + 1 + i] for i in range(4))
        recency = (cutoff_us - latest) / US_PER_DAY
        tenure = (cutoff_us - first) / US_PER_DAY
        at = counted + len(RFM_FEATURES)
        matrix[:, counted:at] = np.column_stack([recency, frequency, tenure, active])
        next_column = counted + 5
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = self._gap_columns(ids, gaps)
            mean_gap = gap[:, 1]
            matrix[:, at : at + len(GAP_FEATURES)] = np.column_stack(
                [
                    gap,
                    np.where(mean_gap > 0, recency / mean_gap, np.nan),
                    np.where(tenure > 0, (tenure - recency) / tenure, np.nan),
                    30.0 * active / np.maximum(tenure, 1.0),
                ]
            )
            at += len(GAP_FEATURES)
            if spec.goal_event:
                goal_latest, goal_days = table[:, next_column], table[:, next_column + 1]
                next_column += 2
                goal = spec.event_keys.index(("track", spec.goal_event)) * len(WINDOW_DAYS)
                last_30d = matrix[:, goal + WINDOW_DAYS.index(30)]
                last_90d = matrix[:, goal + WINDOW_DAYS.index(90)]
                matrix[:, at : at + len(GOAL_FEATURES)] = np.column_stack(
                    [
                        (cutoff_us - goal_latest) / US_PER_DAY,  # NaN when never
                        goal_days,
                        np.where(last_90d > 0, 3.0 * last_30d / last_90d, np.nan),
                    ]
                )
                at += len(GOAL_FEATURES)
            if spec.has_revenue:
                sums = table[:, next_column : next_column + 1 + len(REVENUE_WINDOW_DAYS)]
                matrix[:, at : at + len(REVENUE_FEATURES)] = np.column_stack(
                    [sums, sums[:, 0] / np.maximum(active, 1.0)]
                )
        first_trait = width - len(spec.traits)
        for offset, pairs in enumerate(await self._trait_columns(ws, spec, cutoff_us, population)):
            if not pairs:
                continue
            values = np.array(pairs, dtype=np.float64)
            # Profiles with traits but no event before the cutoff are not in the matrix.
            found = np.searchsorted(ids, values[:, 0].astype(np.int64))
            known = found < len(ids)
            known[known] = ids[found[known]] == values[known, 0].astype(np.int64)
            matrix[found[known], first_trait + offset] = values[known, 1]
        return ids, matrix

    def _gap_query(self, where: list[ColumnElement[bool]]) -> Any:
        """Per profile, the gaps in days between consecutive active days: the last one,
        their mean, mean square and the longest (NULL with fewer than two active days)."""
        day = (events.c.timestamp_us // US_PER_DAY).label("day")
        days = (
            select(profiles.c.canonical_id.label("pid"), day)
            .select_from(self._source())
            .where(*where)
            .group_by(profiles.c.canonical_id, day)
            .subquery()
        )
        gap = cast(
            days.c.day - func.lag(days.c.day).over(partition_by=days.c.pid, order_by=days.c.day),
            sa.Float,
        )
        newest = func.row_number().over(partition_by=days.c.pid, order_by=days.c.day.desc())
        gaps = select(days.c.pid, gap.label("gap"), newest.label("n")).subquery()
        return (
            select(
                gaps.c.pid,
                func.max(case((gaps.c.n == 1, gaps.c.gap))),
                func.avg(gaps.c.gap),
                func.avg(gaps.c.gap * gaps.c.gap),
                func.max(gaps.c.gap),
            )
            .group_by(gaps.c.pid)
            .order_by(gaps.c.pid)
        )

    @staticmethod
    def _gap_columns(ids: np.ndarray, rows: Sequence[Any]) -> np.ndarray:
        """The last, mean, spread and longest gap per profile of `ids` (NaN for a
        profile with a single active day)."""
        out = np.full((len(ids), 4), np.nan)
        if not rows:
            return out
        table = np.array([[np.nan if v is None else float(v) for v in r] for r in rows])
        at = np.searchsorted(ids, table[:, 0].astype(np.int64))
        spread = np.sqrt(np.maximum(table[:, 3] - table[:, 2] ** 2, 0.0))
        out[at] = np.column_stack([table[:, 1], table[:, 2], spread, table[:, 4]])
        return out

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
                *[
                    match_literal(
                        self._json, self._json.prop(events.c.properties, f.property), f.op, f.value
                    )
                    for f in goal.where
                ],
            )
            .distinct()
        )
        async with self._engine.connect() as c:
            found = [r[0] for r in await c.execute(query)]
        return np.array(sorted(found), dtype=np.int64)


def label_vector(ids: np.ndarray, performers: Sequence[int] | np.ndarray) -> np.ndarray:
    """1.0 for each of `ids` among `performers`, else 0.0 (vectorised)."""
    return np.isin(ids, np.asarray(performers, dtype=np.int64)).astype(np.float64)
