"""A layer of audiences recomputed set-based (rollup into a temporary table, diff and
writes in SQL) on Postgres and SQLite: the differences, the stored members, merged
profiles counted as their survivor and a gapless change log."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from services.segmentation.model import BACKFILLING, Progress
from services.segmentation.store import SegmentationStore
from services.segmentation.tables import membership_changes
from services.shared.db.engine import create_engine
from services.shared.db.tables import events, profiles

pytestmark = pytest.mark.integration

WS = "ws_recompute"
DAY = 86_400_000_000
NOW = 1_735_689_600_000_000
DONE = Progress(3, 3, "done")
ORDER = "Order Completed"


async def _check(url: str) -> None:
    engine = create_engine(url)
    store = SegmentationStore(engine)
    try:
        async with engine.begin() as c:
            await c.execute(
                profiles.insert(),
                [
                    {
                        "profile_id": p,
                        "workspace_id": WS,
                        "canonical_id": 3 if p == 4 else p,  # 4 was merged into 3
                        "created_at_us": 1,
                    }
                    for p in (1, 2, 3, 4)
                ],
            )
            await c.execute(
                events.insert(),
                [
                    {
                        "seq": i,
                        "workspace_id": WS,
                        "message_id": f"m{i}",
                        "type": "track",
                        "name": ORDER,
                        "profile_id": p,
                        "timestamp_us": NOW - days * DAY,
                        "received_at_us": NOW,
                        "properties": {},
                    }
                    for i, (p, days) in enumerate([(1, 1), (2, 10), (4, 2)], start=1)
                ],
            )
        ever = {"event": {"name": ORDER, "count": {"op": "gte", "value": 1}}}
        recent = {
            "event": {
                "name": ORDER,
                "count": {"op": "gte", "value": 1},
                "window": {"within_days": 5},
            }
        }
        layer = [
            await store.create_audience(
                WS,
                key=key,
                name=key,
                description="",
                definition=definition,
                account_level=False,
                state=BACKFILLING,
                now_us=1,
            )
            for key, definition in (("ever", ever), ("recent", recent))
        ]
        first = await store.recompute_audiences(WS, layer, NOW, DONE)
        assert [(d.entered, d.exited, d.size) for d in first] == [
            ((1, 2, 3), (), 3),
            ((1, 3), (), 2),
        ]
        # 3.5 days later profile 4's order (now 3's) is 5.5 days old: 3 leaves "recent".
        later = NOW + 3 * DAY + DAY // 2
        second = await store.recompute_audiences(WS, layer, later, DONE)
        assert [(d.entered, d.exited, d.size) for d in second] == [((), (), 3), ((), (3,), 1)]
        assert await store.members(layer[0].audience_id) == {1: NOW, 2: NOW, 3: NOW}
        assert await store.members(layer[1].audience_id) == {1: NOW}
        again = await store.recompute_audiences(WS, layer, later, DONE)
        assert [(d.entered, d.exited) for d in again] == [((), ()), ((), ())]
        async with engine.connect() as c:
            rows = list(
                await c.execute(
                    select(
                        membership_changes.c.seq,
                        membership_changes.c.audience_id,
                        membership_changes.c.profile_id,
                        membership_changes.c.kind,
                        membership_changes.c.at_us,
                    )
                    .where(membership_changes.c.workspace_id == WS)
                    .order_by(membership_changes.c.seq)
                )
            )
        ever_id, recent_id = (a.audience_id for a in layer)
        assert [tuple(r) for r in rows] == [
            (1, ever_id, 1, "entered", NOW),
            (2, ever_id, 2, "entered", NOW),
            (3, ever_id, 3, "entered", NOW),
            (4, recent_id, 1, "entered", NOW),
            (5, recent_id, 3, "entered", NOW),
            (6, recent_id, 3, "exited", later),
        ]
    finally:
        await engine.dispose()


async def test_postgres(database_url: str) -> None:
    await _check(database_url)


async def test_sqlite(sqlite_url: str) -> None:
    await _check(sqlite_url)
