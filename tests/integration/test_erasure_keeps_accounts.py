"""Erasing a person, in SQL on SQLite and Postgres: the accounts they were the only
user of stay (as accounts without users, so `none` holds for them), their group calls
keep the account's facts and lose everything about the person, and their exit records
keep the identifiers they had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.profile.store import ProfileStore
from services.segmentation.accounts import ACCOUNT_ID_TYPE
from services.segmentation.model import EXITED, LIVE, Progress
from services.segmentation.store import SegmentationStore
from services.shared.db.tables import events, identities, profiles
from tests.integration.segmentation.sqlsupport import WS, postgres_engine, sqlite_engine

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000_000
HOUR = 3_600_000_000
ADA, BOB = 1, 2
ORDER = {"event": {"name": "Order"}}
CASES: dict[str, tuple[Any, set[str]]] = {
    "none_ordered": ({"account": {"match": "none", "condition": ORDER}}, {"solo"}),
    "any_ordered": ({"account": {"match": "any", "condition": ORDER}}, {"shared"}),
    "all_ordered": ({"account": {"match": "all", "condition": ORDER}}, {"shared"}),
    "enterprise": ({"trait": {"name": "plan", "op": "eq", "value": "enterprise"}}, {"solo"}),
}


async def _load(engine: AsyncEngine) -> list[int]:
    """Ada, the only user of `solo` and one of `shared`'s, and Bob. Returns Ada's seqs."""
    rows = [
        {"profile_id": p, "workspace_id": WS, "canonical_id": p, "created_at_us": 0}
        for p in (ADA, BOB)
    ]
    ids = [
        {"workspace_id": WS, "id_type": t, "id_value": v, "profile_id": p, "first_seen_us": 0}
        for p, t, v in [
            (ADA, "user_id", "ada"),
            (ADA, "email", "ada@example.com"),
            (BOB, "user_id", "bob"),
        ]
    ]
    calls = [
        (ADA, "group", None, "solo", {"plan": "enterprise"}, None),
        (ADA, "group", None, "shared", {"plan": "free"}, None),
        (ADA, "track", "Order", None, None, {"total": 5}),
        (BOB, "group", None, "shared", None, None),
        (BOB, "track", "Order", None, None, {"total": 7}),
    ]
    evs = [
        {
            "seq": i + 1,
            "workspace_id": WS,
            "message_id": f"m{i}",
            "type": etype,
            "name": name,
            "profile_id": p,
            "user_id": "ada" if p == ADA else "bob",
            "group_id": gid,
            "timestamp_us": NOW - HOUR,
            "received_at_us": i,
            "properties": props if props is not None else sa.null(),
            "traits": traits if traits is not None else sa.null(),
            "context": {"ip": "192.0.2.1"},
        }
        for i, (p, etype, name, gid, traits, props) in enumerate(calls)
    ]
    async with engine.begin() as c:
        await c.execute(profiles.insert(), rows)
        await c.execute(identities.insert(), ids)
        await c.execute(events.insert(), evs)
    return [e["seq"] for e in evs if e["profile_id"] == ADA]


async def _accounts(store: SegmentationStore, definition: Any) -> set[str]:
    members = await store.evaluate_audience(WS, definition, NOW, account_level=True)
    return {dict(r.identifiers)[ACCOUNT_ID_TYPE] for r in await store.refs(WS, sorted(members))}


async def _check(engine: AsyncEngine) -> None:
    ada_seqs = await _load(engine)
    seg = SegmentationStore(engine)
    assert await _accounts(seg, CASES["none_ordered"][0]) == set()
    assert await _accounts(seg, CASES["all_ordered"][0]) == {"solo", "shared"}
    buyers = await seg.create_audience(
        WS,
        key="buyers",
        name="buyers",
        description="",
        definition=ORDER,
        account_level=False,
        state=LIVE,
        now_us=NOW,
    )
    await seg.apply_members(WS, buyers.audience_id, 1, {ADA, BOB}, NOW, Progress(3, 3, "done"))

    async with ProfileStore(engine).erasing(WS, ADA, NOW + 1) as erased:
        assert erased.profile_ids == [ADA]
        assert erased.audiences_exited == 1
    assert erased.event_seqs == ada_seqs
    assert sorted(erased.identifiers) == [("email", "ada@example.com"), ("user_id", "ada")]

    # Her group calls stay as the accounts' facts, with nothing about her left.
    async with engine.connect() as c:
        kept = (
            await c.execute(
                sa.select(
                    events.c.type,
                    events.c.group_id,
                    events.c.traits,
                    events.c.user_id,
                    events.c.anonymous_id,
                    events.c.context,
                    events.c.properties,
                )
                .where(events.c.profile_id == ADA)
                .order_by(events.c.seq)
            )
        ).all()
    assert [tuple(r) for r in kept] == [
        ("group", "solo", {"plan": "enterprise"}, None, None, None, None),
        ("group", "shared", {"plan": "free"}, None, None, None, None),
    ]
    # `solo` is an account without users now: `none` holds, `all` does not, and its
    # traits are still its own; `shared` keeps Bob.
    for name, (definition, expected) in CASES.items():
        assert await _accounts(seg, definition) == expected, name
    solo = await seg.accounts.resolve(WS, "solo")
    assert solo is not None
    assert await seg.accounts.facts(WS, solo, NOW) == ({"plan": "enterprise"}, [])

    # Her exit names her by the identifiers she had.
    changes = await seg.changes_after(WS, 0, [buyers.audience_id], 100)
    exits = [c for c in changes if c.kind == EXITED]
    assert [(c.profile_id, c.identifiers) for c in exits] == [
        (ADA, (("email", "ada@example.com"), ("user_id", "ada")))
    ]
    assert all(c.identifiers is None for c in changes if c.kind != EXITED)
    members, total = await seg.members_page(WS, buyers.audience_id, 0, 10)
    assert [m.profile_id for m in members] == [BOB] and total == 1


async def test_sqlite(tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine)


async def test_postgres() -> None:
    async with postgres_engine() as engine:
        await _check(engine)
