"""Account-level audiences in SQL (sql_accounts.py) on SQLite and Postgres against the
reference evaluator: any/all/none, an empty account (its only user erased), a user
merged across two accounts, group calls after now, and account traits (latest call
wins, null removes; dotted names walk into nested values, a literal dotted key first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.accounts import ACCOUNT_ID_TYPE
from services.segmentation.language import parse_audience
from services.segmentation.reference import ProfileData, evaluate
from services.segmentation.store import SegmentationStore
from services.shared.db.tables import events, profile_traits, profiles
from tests.integration.segmentation.sqlsupport import WS, postgres_engine, sqlite_engine

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000_000
HOUR = 3_600_000_000

# profile row -> canonical row; row 6 is erased.
PROFILES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 6, 7: 7, 8: 8}
DELETED = {6}
# (row, type, name, group_id, hours before now, properties, traits)
EVENTS: list[tuple[int, str, str | None, str | None, float, Any, Any]] = [
    (1, "group", None, "acme", 10, None, {"plan": "pro", "seats": 5, "billing": {"tier": "pro"}}),
    (2, "group", None, "acme", 9, None, None),
    (1, "group", None, "acme", 5, None, {"plan": "enterprise", "billing.tier": "gold"}),
    (2, "group", None, "acme", 1, None, {"seats": None}),
    (8, "group", None, "acme", -1, None, {"plan": "free"}),  # after now: not yet
    (3, "group", None, "beta", 3, None, {"plan": "free", "billing": {"tier": "pro"}}),
    (5, "group", None, "gamma", 4, None, {}),  # dan, on his merged-away row
    (4, "group", None, "delta", 4, None, {"plan": "pro", "billing": "pro"}),
    # Its only user is erased.
    (6, "group", None, "empty", 2, None, {"plan": "pro", "billing": {"tier": "pro"}}),
    (7, "group", None, "future", -2, None, {"plan": "pro"}),  # exists only after now
    (1, "track", "Order", None, 2, {"total": 30}, None),
    (1, "track", "Order", None, 1, {"total": 12}, None),
    (3, "track", "Order", None, 2, {"total": 99}, None),
    (5, "track", "Order", None, 6, {"total": 5}, None),
    (6, "track", "Order", None, 6, {"total": 5}, None),
]
TRAITS = [
    (1, "role", "admin"),
    (2, "role", "member"),
    (4, "role", "admin"),
    (3, "team", {"lead": True}),
    (2, "team", {"lead": False}),
]

ORDER = {"event": {"name": "Order"}}
CASES: dict[str, tuple[Any, set[str]]] = {
    "any": ({"account": {"match": "any", "condition": ORDER}}, {"acme", "beta", "gamma", "delta"}),
    "all": ({"account": {"match": "all", "condition": ORDER}}, {"beta", "gamma", "delta"}),
    "none": ({"account": {"match": "none", "condition": ORDER}}, {"empty"}),
    "not_all": ({"not": {"account": {"match": "all", "condition": ORDER}}}, {"acme", "empty"}),
    "some_did_not": (
        {
            "account": {
                "match": "any",
                "condition": {"event": {**ORDER["event"], "count": {"op": "eq", "value": 0}}},
            }
        },
        {"acme"},
    ),
    "trait_and_users": (
        {
            "all": [
                {"trait": {"name": "plan", "op": "in", "value": ["enterprise", "pro"]}},
                {
                    "account": {
                        "match": "any",
                        "condition": {"trait": {"name": "role", "op": "eq", "value": "admin"}},
                    }
                },
            ]
        },
        {"acme", "delta"},
    ),
    "null_removes": ({"trait": {"name": "seats", "op": "exists"}}, set()),
    "latest_wins": ({"trait": {"name": "plan", "op": "eq", "value": "pro"}}, {"delta", "empty"}),
    # acme's later call set the literal "billing.tier" key, which wins over the nested
    # value; delta's billing is a string, so there is nothing to walk into.
    "dotted_tier": (
        {"trait": {"name": "billing.tier", "op": "eq", "value": "pro"}},
        {"beta", "empty"},
    ),
    "dotted_literal_first": (
        {"trait": {"name": "billing.tier", "op": "eq", "value": "gold"}},
        {"acme"},
    ),
    "dotted_missing": ({"trait": {"name": "billing.tier", "op": "not_exists"}}, {"gamma", "delta"}),
    "users_dotted": (
        {
            "account": {
                "match": "any",
                "condition": {"trait": {"name": "team.lead", "op": "eq", "value": True}},
            }
        },
        {"beta"},
    ),
    "two_quantifiers": (
        {
            "any": [
                {
                    "account": {
                        "match": "all",
                        "condition": {"trait": {"name": "role", "op": "eq", "value": "admin"}},
                    }
                },
                {
                    "account": {
                        "match": "none",
                        "condition": {
                            "event": {
                                "name": "Order",
                                "where": [{"property": "total", "op": "gt", "value": 50}],
                            }
                        },
                    }
                },
            ]
        },
        {"acme", "gamma", "delta", "empty"},
    ),
}


async def _load(engine: AsyncEngine) -> None:
    rows = [
        {
            "profile_id": row,
            "workspace_id": WS,
            "canonical_id": canonical,
            "created_at_us": 0,
            "deleted_at_us": NOW - HOUR if row in DELETED else None,
        }
        for row, canonical in PROFILES.items()
    ]
    evs = [
        {
            "seq": i + 1,
            "workspace_id": WS,
            "message_id": f"m{i}",
            "type": etype,
            "name": name,
            "profile_id": row,
            "group_id": gid,
            "timestamp_us": NOW - int(hours * HOUR),
            "received_at_us": i,
            "properties": props if props is not None else sa.null(),
            "traits": traits if traits is not None else sa.null(),
        }
        for i, (row, etype, name, gid, hours, props, traits) in enumerate(EVENTS)
    ]
    trait_rows = [
        {"profile_id": row, "key": k, "workspace_id": WS, "value": v, "timestamp_us": 0, "seq": 0}
        for row, k, v in TRAITS
    ]
    async with engine.begin() as c:
        await c.execute(profiles.insert(), rows)
        await c.execute(events.insert(), evs)
        await c.execute(profile_traits.insert(), trait_rows)


async def _check(engine: AsyncEngine) -> None:
    await _load(engine)
    store = SegmentationStore(engine)
    for name, (definition, expected) in CASES.items():
        members = await store.evaluate_audience(WS, definition, NOW, account_level=True)
        refs = await store.refs(WS, sorted(members))
        got = {dict(r.identifiers)[ACCOUNT_ID_TYPE] for r in refs}
        assert got == expected, name
        # The reference over what ExplainMembership loads for each account agrees.
        node = parse_audience(definition)
        for gid in ("acme", "beta", "gamma", "delta", "empty"):
            member = await store.accounts.resolve(WS, gid)
            assert member is not None
            traits, users = await store.accounts.facts(WS, member, NOW)
            people = []
            for user in users:
                facts = await store.facts(WS, user)
                people.append(ProfileData(events=facts.events, traits=facts.traits))
            account = ProfileData(traits=traits, members=people)
            assert evaluate(node, account, NOW) == (gid in expected), (name, gid)
    # "future" has an id (its group call is stored) but does not exist at now.
    assert await store.accounts.resolve(WS, "future") is not None
    later = await store.evaluate_audience(WS, CASES["latest_wins"][0], NOW + 3 * HOUR, True)
    refs = await store.refs(WS, sorted(later))
    assert {dict(r.identifiers)[ACCOUNT_ID_TYPE] for r in refs} == {"delta", "empty", "future"}


async def test_sqlite(tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine)


async def test_postgres() -> None:
    async with postgres_engine() as engine:
        await _check(engine)
