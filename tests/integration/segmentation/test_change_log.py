"""The change log under concurrency: writers of one workspace on separate connection
pools (as separate processes would be) get gapless, unique seqs in commit order, and
two writers applying the same member set record each entry once; rows of profiles
merged since they entered follow the survivor without a change record."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.segmentation.model import BACKFILLING, Progress
from services.segmentation.store import SegmentationStore
from services.segmentation.tables import membership_changes
from services.shared.db.engine import create_engine
from services.shared.db.tables import profiles

pytestmark = pytest.mark.integration

WS = "ws_log"
DONE = Progress(3, 3, "done")


async def _check(url: str) -> None:
    engines = [create_engine(url) for _ in range(2)]
    stores = [SegmentationStore(e) for e in engines]
    try:
        ids = []
        for key in ("a", "b"):
            record = await stores[0].create_audience(
                WS,
                key=key,
                name=key,
                description="",
                definition={"event": {"name": "x"}},
                account_level=False,
                state=BACKFILLING,
                now_us=1,
            )
            ids.append(record.audience_id)
        members = set(range(1, 301))
        # Two audiences at once, then the same audience twice at once.
        await asyncio.gather(
            stores[0].apply_members(WS, ids[0], 1, members, 10, DONE),
            stores[1].apply_members(WS, ids[1], 1, members, 10, DONE),
        )
        diffs = await asyncio.gather(
            stores[0].apply_members(WS, ids[0], 1, members | {301}, 20, DONE),
            stores[1].apply_members(WS, ids[0], 1, members | {301}, 20, DONE),
        )
        assert sorted(len(d.entered) for d in diffs) == [0, 1]
        async with engines[0].connect() as c:
            rows = list(
                await c.execute(
                    select(membership_changes.c.seq, membership_changes.c.audience_id)
                    .where(membership_changes.c.workspace_id == WS)
                    .order_by(membership_changes.c.seq)
                )
            )
        assert [r.seq for r in rows] == list(range(1, 602))
        # Each writer's records form one contiguous block (the writers were serialised).
        first_block = {r.audience_id for r in rows[:300]}
        assert len(first_block) == 1 and {r.audience_id for r in rows[300:600]} != first_block
        assert await stores[0].members(ids[0]) == {p: 10 for p in members} | {301: 20}
    finally:
        for engine in engines:
            await engine.dispose()


async def _check_merges(url: str) -> None:
    engine = create_engine(url)
    store = SegmentationStore(engine)
    try:
        record = await store.create_audience(
            WS,
            key="m",
            name="m",
            description="",
            definition={"event": {"name": "x"}},
            account_level=False,
            state=BACKFILLING,
            now_us=1,
        )
        aid = record.audience_id
        async with engine.begin() as c:
            await c.execute(
                profiles.insert(),
                [
                    {"profile_id": p, "workspace_id": WS, "canonical_id": p, "created_at_us": 1}
                    for p in (5, 6, 7, 8, 9)
                ],
            )
        first = await store.apply_members(WS, aid, 1, {5, 6, 9}, 10, DONE)
        assert first.entered == (5, 6, 9) and first.exited == ()
        async with engine.begin() as c:  # 5 merges into 7, 6 into 8
            for merged, survivor in ((5, 7), (6, 8)):
                await c.execute(
                    profiles.update()
                    .where(profiles.c.profile_id == merged)
                    .values(canonical_id=survivor)
                )
        diff = await store.apply_members(WS, aid, 2, {7, 9}, 20, DONE)
        # 7 is the person who entered as 5: no change; 8 (was 6) left; 9 stays.
        assert (diff.entered, diff.exited, diff.size) == ((), (8,), 2)
        assert await store.members(aid) == {7: 10, 9: 10}
        async with engine.connect() as c:
            rows = list(
                await c.execute(
                    select(
                        membership_changes.c.seq,
                        membership_changes.c.profile_id,
                        membership_changes.c.kind,
                        membership_changes.c.version,
                    )
                    .where(membership_changes.c.audience_id == aid)
                    .order_by(membership_changes.c.seq)
                )
            )
        start = rows[0].seq
        assert [tuple(r) for r in rows] == [
            (start, 5, "entered", 1),
            (start + 1, 6, "entered", 1),
            (start + 2, 9, "entered", 1),
            (start + 3, 8, "exited", 2),
        ]
    finally:
        await engine.dispose()


async def test_postgres(database_url: str) -> None:
    await _check(database_url)
    await _check_merges(database_url)


async def test_sqlite(sqlite_url: str) -> None:
    await _check(sqlite_url)
    await _check_merges(sqlite_url)
