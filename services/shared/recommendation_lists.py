"""Reading the top-N item lists a recommendation training wrote.

The profile service's training keeps each profile's items of each object in the shared
read model ``recommendation_lists`` (services.shared.db.tables), replaced per object
per training in one transaction, beside the hot state's copy
(``hs:{ws}:p:<pid>:recs_by_model``) that GetProfile and GetRecommendations serve. The
database is where a reader outside the serving path finds them: the sync service's
recommendation syncs, and the profile service's hot-state rebuild. Pages are keyset
reads in profile id order of the workspace's live profiles (surviving and not erased:
a merged-away profile's list waits for the next training to go, as its hot state went
with the merge), so a read costs the object's rows and nothing else of the workspace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.db.tables import profiles, recommendation_lists


async def encoded_lists_of(
    engine: AsyncEngine, workspace_id: str, model_key: str, page_size: int = 500
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Pages of (profile id, its items of `model_key` as the JSON array text the hot
    state holds) of every live profile with a list, in profile id order."""
    lists = recommendation_lists
    after = -1
    while True:
        query = (
            select(lists.c.profile_id, lists.c["items"])
            .select_from(
                lists.join(
                    profiles,
                    (profiles.c.profile_id == lists.c.profile_id)
                    & (profiles.c.workspace_id == lists.c.workspace_id),
                )
            )
            .where(
                lists.c.workspace_id == workspace_id,
                lists.c.model_key == model_key,
                lists.c.profile_id > after,
                profiles.c.canonical_id == profiles.c.profile_id,
                profiles.c.deleted_at_us.is_(None),
            )
            .order_by(lists.c.profile_id)
            .limit(page_size)
        )
        async with engine.connect() as connection:
            page = [(int(pid), items.encode()) for pid, items in await connection.execute(query)]
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = page[-1][0]


async def lists_of(
    engine: AsyncEngine, workspace_id: str, model_key: str, page_size: int = 500
) -> AsyncIterator[list[tuple[int, list[dict[str, Any]]]]]:
    """Pages of (profile id, items best first) of every live profile that has items of
    `model_key`, in profile id order. An item is {item_id, score, model, metadata (JSON
    object text)}."""
    async for page in encoded_lists_of(engine, workspace_id, model_key, page_size):
        yield [(pid, orjson.loads(items)) for pid, items in page]
