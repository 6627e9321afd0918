"""ListMembers' pages over membership rows some of which still sit on profiles merged
away since they entered (until the next write re-keys them): each person once, under
the survivor, entered at the earliest of their rows, in person order, with a `total`
of people; on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.store import SegmentationStore
from services.segmentation.tables import memberships
from services.shared.db.tables import profiles
from tests.integration.segmentation.sqlsupport import WS, postgres_engine, sqlite_engine

pytestmark = pytest.mark.integration

AUDIENCE = 1
# profile -> survivor: 3 went into 8 (which has no row of its own), 5 into 2 (which
# has one, entered later), 9 into 4 (no row of its own).
CANONICAL = {1: 1, 2: 2, 3: 8, 4: 4, 5: 2, 6: 6, 7: 7, 8: 8, 9: 4, 10: 10}
# membership rows: profile -> entered_at_us
ROWS = {1: 100, 2: 20, 3: 5, 5: 10, 6: 100, 7: 100, 9: 7}
PEOPLE = {1: 100, 2: 10, 4: 7, 6: 100, 7: 100, 8: 5}


async def _load(engine: AsyncEngine) -> None:
    async with engine.begin() as c:
        await c.execute(
            profiles.insert(),
            [
                {"profile_id": p, "workspace_id": WS, "canonical_id": s, "created_at_us": 0}
                for p, s in CANONICAL.items()
            ],
        )
        await c.execute(
            memberships.insert(),
            [
                {"workspace_id": WS, "audience_id": AUDIENCE, "profile_id": p, "entered_at_us": at}
                for p, at in ROWS.items()
            ],
        )


async def _check(engine: AsyncEngine) -> None:
    await _load(engine)
    store = SegmentationStore(engine)
    seen: dict[int, int] = {}
    after = 0
    pages = []
    while True:
        page, total = await store.members_page(WS, AUDIENCE, after, 2)
        assert total == len(PEOPLE)
        if not page:
            break
        pages.append([m.profile_id for m in page])
        seen.update((m.profile_id, m.entered_at_us) for m in page)
        after = page[-1].profile_id
    assert pages == [[1, 2], [4, 6], [7, 8]]
    assert seen == PEOPLE
    # The whole list at once says the same, and Preview's member set agrees.
    whole, _ = await store.members_page(WS, AUDIENCE, 0, 100)
    assert {m.profile_id: m.entered_at_us for m in whole} == PEOPLE
    assert await store.members(AUDIENCE) == PEOPLE


async def test_sqlite(tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path) as engine:
        await _check(engine)


async def test_postgres() -> None:
    async with postgres_engine() as engine:
        await _check(engine)
