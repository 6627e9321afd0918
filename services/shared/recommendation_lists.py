"""Reading the top-N item lists one recommendation object wrote into the hot state.

The profile service's training (services/profile/recommendations/hotwrite.py) keeps
each profile's items of each object in ``hs:{ws}:p:<pid>:recs_by_model`` (object key
-> the items as JSON list members, no brackets). That hash is where the results live
(there is no Postgres copy), so a reader outside the profile service (the sync
service's recommendation syncs) reads them here, in pages: a SCAN of the workspace's
``recs_by_model`` keys and one pipelined HGET of the object's field per page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis

from services.shared import hotstate

SECTION = "recs_by_model"


async def lists_of(
    redis: Redis, workspace_id: str, model_key: str, page_size: int = 500
) -> AsyncIterator[list[tuple[int, list[dict[str, Any]]]]]:
    """Pages of (profile id, items best first) of every profile that has items of
    `model_key`, each page in profile id order (SCAN order across pages). An item is
    {item_id, score, model, metadata (JSON object text)}."""
    head = f"{hotstate.workspace_prefix(workspace_id)}p:"
    tail = f":{SECTION}"
    keys: list[str] = []
    async for raw in redis.scan_iter(match=f"{head}*{tail}", count=1000):
        keys.append(raw.decode() if isinstance(raw, bytes) else raw)
        if len(keys) >= page_size:
            page = await _page(redis, keys, model_key, len(head), len(tail))
            if page:
                yield page
            keys = []
    if keys:
        page = await _page(redis, keys, model_key, len(head), len(tail))
        if page:
            yield page


async def _page(
    redis: Redis, keys: list[str], model_key: str, head: int, tail: int
) -> list[tuple[int, list[dict[str, Any]]]]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, model_key)
        values = await pipe.execute()
    out = []
    for key, value in zip(keys, values, strict=True):
        pid = key[head:-tail]
        if value and pid.isdigit():
            out.append((int(pid), orjson.loads(b"[" + _bytes(value) + b"]")))
    out.sort(key=lambda row: row[0])
    return out


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
