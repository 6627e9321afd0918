"""The change log under concurrency: writers of one workspace on separate connection
pools (as separate processes would be) get gapless, unique seqs in commit order, and
two writers applying the same member set record each entry once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select

from services.segmentation.model import BACKFILLING, Progress
from services.segmentation.store import SegmentationStore
from services.segmentation.tables import membership_changes
from services.shared.db import migrate
from services.shared.db.engine import create_engine

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


async def test_postgres(database_url: str) -> None:
    await _check(database_url)


async def test_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/seg.db"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    await _check(url)
