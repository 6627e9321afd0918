"""Writes each profile's top-N items of one recommendation object into the hot state.

A profile's ``recs`` string (services.shared.hotstate) is a JSON list of items from
every object of the workspace, each tagged with its object's key (``model``); an
item's ``metadata`` is JSON object text inside it, which GetProfile's script passes
to the wire without decoding. Each object's items are also kept apart in the
profile's ``recs_by_model`` hash, so writing one object's lists replaces that
object's items and keeps the others' without decoding any: one script call per batch
of profiles, which also drops the profile's cached wire encoding (as every hot-state
writer does). The database keeps the same lists (services.shared.recommendation_lists),
from which a rebuild writes them back here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from services.shared import hotstate

# Profiles per script call: bounds one call's time inside Redis.
BATCH_PROFILES = 500

# KEYS: the profiles' recs keys. ARGV[1]: the object key. ARGV[1 + k]: that object's
# new items for KEYS[k] as JSON list members without the brackets ('' removes them).
# Nothing is decoded: recs is rebuilt as the join of recs_by_model in key order, so the
# bytes depend only on what each object wrote.
_REPLACE_LUA = """
local model = ARGV[1]
for k = 1, #KEYS do
  local key = KEYS[k]
  local base = string.sub(key, 1, -5)
  local by_model = base .. 'recs_by_model'
  if ARGV[k + 1] == '' then
    redis.call('HDEL', by_model, model)
  else
    redis.call('HSET', by_model, model, ARGV[k + 1])
  end
  local flat = redis.call('HGETALL', by_model)
  local names, items = {}, {}
  for i = 1, #flat, 2 do
    names[#names + 1] = flat[i]
    items[flat[i]] = flat[i + 1]
  end
  table.sort(names)
  local parts = {}
  for i, name in ipairs(names) do parts[i] = items[name] end
  if #parts == 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, '[' .. table.concat(parts, ',') .. ']')
  end
  redis.call('DEL', base .. 'wire')
end
return #KEYS
"""


# KEYS[1]: the workspace's recs_popular hash, KEYS[2]: its recs_popular_more hash.
# ARGV[1]: the object key, ARGV[2]: its popular items as JSON list members ('' removes
# them), ARGV[3]: the version field, ARGV[4]: the items that follow (the reserve; ''
# when none). The version rises with every write, so a cached profile encoding that
# served the old list is not served again (services.profile.hotread).
_POPULAR_LUA = """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if ARGV[2] == '' or ARGV[4] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
end
return redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
"""


class RecommendationWriter:
    """Replaces one object's items in profiles' hot state."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_REPLACE_LUA)
        self._popular = redis.register_script(_POPULAR_LUA)

    async def replace(
        self,
        workspace_id: str,
        model_key: str,
        lists: Sequence[tuple[int | str, Sequence[dict[str, Any]]]],
        progress: Callable[[float], Any] | None = None,
    ) -> None:
        """Write (profile id, items) pairs: each profile's items of `model_key` become
        these (an empty list removes them); other objects' items stay."""
        encoded = [(pid, orjson.dumps(list(items))) for pid, items in lists]
        await self.replace_encoded(workspace_id, model_key, encoded, progress)

    async def replace_encoded(
        self,
        workspace_id: str,
        model_key: str,
        lists: Sequence[tuple[int | str, bytes]],
        progress: Callable[[float], Any] | None = None,
    ) -> None:
        """`replace` of lists already encoded as JSON arrays (as the database keeps
        them: services.shared.recommendation_lists), written without decoding."""
        for start in range(0, len(lists), BATCH_PROFILES):
            batch = lists[start : start + BATCH_PROFILES]
            keys = [hotstate.profile_key(workspace_id, pid, "recs") for pid, _ in batch]
            args: list[str | bytes] = [model_key]
            args += [text[1:-1] for _, text in batch]
            await self._script(keys=keys, args=args)
            if progress is not None:
                await progress((start + len(batch)) / len(lists))

    async def set_popular(
        self,
        workspace_id: str,
        model_key: str,
        items: Sequence[dict[str, Any]],
        reserve: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Make `items` the object's workspace-level popular list, served to profiles
        without a list of their own for it (an empty list removes it), and `reserve`
        the items that follow, which refill it for a profile that consumed some."""
        await self._popular(
            keys=[
                hotstate.popular_recommendations_key(workspace_id),
                hotstate.popular_reserve_key(workspace_id),
            ],
            args=[
                model_key,
                orjson.dumps(list(items))[1:-1],
                hotstate.POPULAR_VERSION_FIELD,
                orjson.dumps(list(reserve))[1:-1],
            ],
        )

    async def clear_own_lists(self, workspace_id: str) -> int:
        """Remove every profile's own lists of the workspace (recs, recs_by_model and
        the cached encodings that may hold them), before a rebuild writes the
        database's back; returns how many profiles had some."""
        head = f"{hotstate.workspace_prefix(workspace_id)}p:"
        found = 0
        async for key in self._redis.scan_iter(match=f"{head}*:recs_by_model", count=1000):
            text = key.decode() if isinstance(key, bytes) else key
            base = text[: -len("recs_by_model")]
            await self._redis.delete(text, base + "recs", base + "wire")
            found += 1
        return found

    async def remove_everywhere(self, workspace_id: str, model_key: str) -> None:
        """Remove an object's items from every profile of the workspace (SCAN + script)
        and its popular list."""
        await self.set_popular(workspace_id, model_key, [])
        head = f"{hotstate.workspace_prefix(workspace_id)}p:"
        batch: list[tuple[int | str, Sequence[dict[str, Any]]]] = []
        async for key in self._redis.scan_iter(match=f"{head}*:recs_by_model", count=1000):
            text = key.decode() if isinstance(key, bytes) else key
            batch.append((text[len(head) : -len(":recs_by_model")], []))
        await self.replace(workspace_id, model_key, batch)
