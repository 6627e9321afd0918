"""Point-in-time features and labels on Postgres and SQLite: exact values on a small
history, goal filters, and no feature computed from the label period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.prediction.features import FeatureSpec
from services.prediction.features_sql import FeatureQueries
from services.prediction.model import Goal, GoalFilter
from services.segmentation.reference import get_property, match_value
from services.shared.clock import US_PER_DAY
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.integration.prediction.planted import add_profiles, insert_events, plant

WS = "ws_features"
CUTOFF = 1_735_689_600_000_000  # 2025-01-01
HOUR = 3_600_000_000


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest, resources: Resources, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """The per-test Postgres database, or a migrated SQLite file."""
    if request.param == "postgresql":
        yield resources.engine
        return
    sqlite = create_engine(f"sqlite+aiosqlite:///{tmp_path}/prediction.db")
    await migrate.upgrade(sqlite)
    yield sqlite
    await sqlite.dispose()


def event(pid: int, name: str, at_us: int, **props: Any) -> dict[str, Any]:
    return {
        "workspace_id": WS,
        "profile_id": pid,
        "type": "track",
        "name": name,
        "timestamp_us": at_us,
        "message_id": f"{pid}-{name}-{at_us}",
        "properties": props or None,
    }


async def test_counts_recency_tenure_active_days_and_revenue(engine: AsyncEngine) -> None:
    a, b = await add_profiles(engine, WS, 2, CUTOFF)
    await insert_events(
        engine,
        [
            event(a, "view", CUTOFF - 2 * HOUR),  # 1d window
            event(a, "view", CUTOFF - 3 * US_PER_DAY),  # 7d
            event(a, "view", CUTOFF - 20 * US_PER_DAY),  # 30d
            event(a, "purchase", CUTOFF - 60 * US_PER_DAY, revenue=12.5),  # 90d
            event(a, "purchase", CUTOFF - 100 * US_PER_DAY, revenue=7),  # beyond 90d
            event(a, "view", CUTOFF),  # exactly at the cutoff: a feature, never a label
            event(b, "purchase", CUTOFF - 10 * US_PER_DAY, revenue="lots"),  # not a number
        ],
    )
    queries = FeatureQueries(engine)
    spec = await queries.choose_spec(WS, CUTOFF, Goal("purchase"))
    assert spec == FeatureSpec(
        (("track", "purchase"), ("track", "view")), has_revenue=True, goal_event="purchase"
    )
    ids, matrix = await queries.features(WS, spec, CUTOFF, None)
    assert ids.tolist() == [a, b]
    row = dict(zip(spec.names(), matrix[0], strict=True))
    assert [row[f"view count {d}d"] for d in (1, 7, 30, 90)] == [2, 3, 4, 4]
    assert [row[f"purchase count {d}d"] for d in (1, 7, 30, 90)] == [0, 0, 0, 1]
    assert row["recency_days"] == 0
    assert row["frequency"] == 6
    assert row["tenure_days"] == 100
    assert row["active_days"] == 6  # UTC days; the cutoff is midnight, 2h before is the day before
    assert (row["revenue_sum"], row["revenue_sum_90d"]) == (19.5, 12.5)
    assert (row["revenue_sum_7d"], row["revenue_sum_30d"]) == (0, 0)
    assert row["revenue_per_active_day"] == 19.5 / 6
    # Active days 100, 60, 20, 3, 1 and 0 days before the cutoff: gaps 40, 40, 17, 2, 1.
    assert (row["last_gap_days"], row["mean_gap_days"], row["longest_gap_days"]) == (1, 20, 40)
    assert row["gap_spread_days"] == pytest.approx(np.std([40, 40, 17, 2, 1]))
    assert (row["overdue_ratio"], row["active_span_share"]) == (0, 1)
    assert row["active_days_per_30d"] == pytest.approx(1.8)
    assert (row["goal recency_days"], row["goal active_days"]) == (60, 2)
    assert row["goal trend 30d/90d"] == 0
    other = dict(zip(spec.names(), matrix[1], strict=True))
    assert (other["revenue_sum"], other["recency_days"]) == (0, 10)
    assert np.isnan(other["last_gap_days"]) and np.isnan(other["overdue_ratio"])
    assert (other["goal recency_days"], other["active_span_share"]) == (10, 0)
    assert (await queries.goal_performers(WS, Goal("view"), CUTOFF, CUTOFF + HOUR, None)).size == 0


async def test_nothing_in_the_label_period_reaches_a_feature(engine: AsyncEngine) -> None:
    """Plant events after the cutoff (the goal, a new event name, revenue): the features
    at the cutoff are exactly what they were, while the label sees the goal."""
    planted = await plant(engine, WS, CUTOFF, profile_count=300, days=30)
    queries = FeatureQueries(engine)
    goal = Goal("purchase")
    spec = await queries.choose_spec(WS, CUTOFF, goal)
    ids, before = await queries.features(WS, spec, CUTOFF, None)
    target = planted.profile_ids[0]
    performers_before = await queries.goal_performers(
        WS, goal, CUTOFF, CUTOFF + 7 * US_PER_DAY, None
    )
    assert target not in performers_before.tolist()
    future = [
        event(target, "purchase", CUTOFF + 1, revenue=1000.0),
        event(target, "view_product", CUTOFF + US_PER_DAY),
        event(target, "leaked_signal", CUTOFF + 2 * US_PER_DAY),
    ] + [event(target, "leaked_signal", CUTOFF + 3 * US_PER_DAY + i) for i in range(500)]
    await insert_events(engine, future)

    again = await queries.choose_spec(WS, CUTOFF, goal)
    assert again == spec
    assert not any("leaked_signal" in name for name in again.names())
    ids_after, after = await queries.features(WS, spec, CUTOFF, None)
    assert np.array_equal(ids, ids_after)
    assert np.array_equal(before, after, equal_nan=True)
    performers = await queries.goal_performers(WS, goal, CUTOFF, CUTOFF + 7 * US_PER_DAY, None)
    assert target in performers.tolist()


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ((GoalFilter("plan", "eq", "pro"),), {"pro_1", "pro_10"}),
        ((GoalFilter("plan", "neq", "pro"),), {"basic", "no_plan", "nested"}),
        ((GoalFilter("amount", "gt", 5),), {"pro_10"}),
        ((GoalFilter("amount", "eq", 1),), {"pro_1"}),  # 1 equals 1.0
        ((GoalFilter("plan", "in", ("basic", "pro")),), {"pro_1", "pro_10", "basic"}),
        ((GoalFilter("plan", "not_exists"),), {"no_plan", "nested"}),
        ((GoalFilter("plan", "starts_with", "ba"),), {"basic"}),
        ((GoalFilter("tags", "contains", "gift"),), {"pro_10"}),
        ((GoalFilter("shipping.method", "eq", "express"),), {"nested"}),
        ((GoalFilter("plan", "eq", "pro"), GoalFilter("amount", "lte", 1)), {"pro_1"}),
    ],
)
async def test_goal_filters(
    engine: AsyncEngine, where: tuple[GoalFilter, ...], expected: set[str]
) -> None:
    names = ["pro_1", "pro_10", "basic", "no_plan", "nested"]
    ids = dict(zip(await add_profiles(engine, WS, len(names)), names, strict=True))
    props: dict[str, dict[str, Any]] = {
        "pro_1": {"plan": "pro", "amount": 1.0},
        "pro_10": {"plan": "pro", "amount": 10, "tags": ["gift", "promo"]},
        "basic": {"plan": "basic", "amount": "7"},
        "no_plan": {"amount": 3},
        "nested": {"shipping": {"method": "express"}, "plan": None},
    }
    await insert_events(
        engine, [event(pid, "purchase", CUTOFF + HOUR, **props[n]) for pid, n in ids.items()]
    )
    found = await FeatureQueries(engine).goal_performers(
        WS, Goal("purchase", where), CUTOFF, CUTOFF + US_PER_DAY, None
    )
    assert {ids[p] for p in found.tolist()} == expected


# Property values of the reference check below: every JSON kind, numbers that are and
# are not equal (1 equals 1.0), and a whole number a double cannot hold exactly.
_VALUES: dict[str, Any] = {
    "string": "pro",
    "digits": "5",
    "int": 5,
    "float": 5.0,
    "fraction": 7.5,
    "true": True,
    "null": None,
    "array": ["5", 5, "gift"],
    "object": {"a": 1},
    "big": 9_007_199_254_740_993,  # 2**53 + 1
}


@pytest.mark.parametrize(
    "goal_filter",
    [
        GoalFilter("v", "eq", 5),
        GoalFilter("v", "neq", 5),
        GoalFilter("v", "neq", "pro"),
        GoalFilter("v", "neq", True),
        GoalFilter("v", "in", (5, "pro")),
        GoalFilter("v", "not_in", (5, "x")),
        GoalFilter("v", "gt", 5),
        GoalFilter("v", "lte", 5),
        GoalFilter("v", "gt", 9_007_199_254_740_992),
        GoalFilter("v", "eq", 9_007_199_254_740_993),
        GoalFilter("v", "contains", 5),
        GoalFilter("v", "contains", "r"),
        GoalFilter("v", "starts_with", "p"),
        GoalFilter("v", "exists"),
        GoalFilter("v", "not_exists"),
    ],
    ids=repr,
)
async def test_goal_filters_agree_with_the_audience_reference(
    engine: AsyncEngine, goal_filter: GoalFilter
) -> None:
    """A goal's filter matches exactly the events the audience language's reference
    (segmentation's ``match_value``) matches, as segmentation's SQL does: a value of
    another kind matches ``neq``/``not_in`` (it used to match neither when the operand
    was a number), and whole numbers compare exactly, not as doubles."""
    names = [*_VALUES, "missing"]
    props: dict[str, dict[str, Any]] = {n: {"v": _VALUES[n]} if n in _VALUES else {} for n in names}
    ids = dict(zip(await add_profiles(engine, WS, len(names)), names, strict=True))
    await insert_events(
        engine,
        [event(pid, "purchase", CUTOFF + HOUR, **props[n]) for pid, n in ids.items()],
    )
    found = await FeatureQueries(engine).goal_performers(
        WS, Goal("purchase", (goal_filter,)), CUTOFF, CUTOFF + US_PER_DAY, None
    )
    expected = {
        n
        for n in names
        if match_value(goal_filter.op, get_property(props[n], "v"), goal_filter.value)
    }
    assert {ids[p] for p in found.tolist()} == expected


def identify(pid: int, at_us: int, **traits: Any) -> dict[str, Any]:
    return {
        "workspace_id": WS,
        "profile_id": pid,
        "type": "identify",
        "name": None,
        "timestamp_us": at_us,
        "message_id": f"{pid}-identify-{at_us}",
        "traits": traits,
    }


async def test_traits_as_they_stood_at_the_cutoff(engine: AsyncEngine) -> None:
    """Numeric traits as numbers, common string traits as categories, an email-like
    trait left out; the value is the latest identify at or before the cutoff, and one
    after it (a change, or a new trait) reaches no feature."""
    ids = await add_profiles(engine, WS, 40)
    rows = [event(pid, "view", CUTOFF - 10 * US_PER_DAY) for pid in ids]
    for i, pid in enumerate(ids):
        plan = "pro" if i % 2 else "basic"
        rows.append(identify(pid, CUTOFF - 5 * US_PER_DAY, plan="free", age=20 + i))
        rows.append(identify(pid, CUTOFF - 2 * US_PER_DAY, plan=plan, email=f"p{i}@x.io"))
        rows.append(identify(pid, CUTOFF + HOUR, plan="enterprise", age=99, vip=True))
    await insert_events(engine, rows)
    queries = FeatureQueries(engine)
    spec = await queries.choose_spec(WS, CUTOFF, Goal("view"))
    assert [(t.key, t.categories) for t in spec.traits] == [
        ("age", None),
        ("plan", ("basic", "free", "pro")),
    ]
    assert spec.categorical_columns() == [len(spec.names()) - 1]
    got, matrix = await queries.features(WS, spec, CUTOFF, None)
    assert got.tolist() == ids
    age, plan = spec.column("trait age"), spec.column("trait plan")
    assert matrix[:, age].tolist() == [20 + i for i in range(40)]
    assert [spec.value_text(plan, v) for v in matrix[:4, plan]] == ["basic", "pro"] * 2
    # Between the two identify calls only the first had happened.
    _, earlier = await queries.features(WS, spec, CUTOFF - 3 * US_PER_DAY, None)
    assert {spec.value_text(plan, v) for v in earlier[:, plan]} == {"free"}
    # Before any identify call, a profile has no trait values (missing, not zero).
    _, before = await queries.features(WS, spec, CUTOFF - 6 * US_PER_DAY, None)
    assert np.isnan(before[:, [age, plan]]).all()
