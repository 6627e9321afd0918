"""Writes each profile's top-N items of one recommendation object into the hot state.

A profile's ``recs`` string (services.shared.hotstate) is a JSON list of items from
every object of the workspace, each tagged with its object's key (``model``); an
item's ``metadata`` is JSON object text inside it, which GetProfile's script passes
to the wire without decoding. Writing one object's lists replaces that object's items
and keeps the others', in one script call per batch of profiles, and drops the
profile's cached wire encoding in the same call (as every hot-state writer does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from services.shared import hotstate

# Profiles per script call: bounds one call's time inside Redis.
BATCH_PROFILES = 500

# KEYS: the profiles' recs keys. ARGV[1]: the object key. ARGV[1 + k]: the JSON list of
# that object's new items for KEYS[k] ('[]' removes them).
_REPLACE_LUA = """
local model = ARGV[1]
for k = 1, #KEYS do
  local key = KEYS[k]
  local kept = {}
  local old = redis.call('GET', key)
  if old then
    for _, item in ipairs(cjson.decode(old)) do
      if item.model ~= model then kept[#kept + 1] = item end
    end
  end
  if #kept == 0 then
    if ARGV[k + 1] == '[]' then
      redis.call('DEL', key)
    else
      redis.call('SET', key, ARGV[k + 1])
    end
  else
    for _, item in ipairs(cjson.decode(ARGV[k + 1])) do kept[#kept + 1] = item end
    redis.call('SET', key, cjson.encode(kept))
  end
  redis.call('DEL', string.sub(key, 1, -5) .. 'wire')
end
return #KEYS
"""


class RecommendationWriter:
    """Replaces one object's items in profiles' hot state."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_REPLACE_LUA)

    async def replace(
        self,
        workspace_id: str,
        model_key: str,
        lists: Sequence[tuple[int | str, Sequence[dict[str, Any]]]],
        progress: Callable[[float], Any] | None = None,
    ) -> None:
        """Write (profile id, items) pairs: each profile's items of `model_key` become
        these (an empty list removes them); other objects' items stay."""
        for start in range(0, len(lists), BATCH_PROFILES):
            batch = lists[start : start + BATCH_PROFILES]
            keys = [hotstate.profile_key(workspace_id, pid, "recs") for pid, _ in batch]
            args: list[str | bytes] = [model_key]
            args += [orjson.dumps(list(items)) for _, items in batch]
            await self._script(keys=keys, args=args)
            if progress is not None:
                await progress((start + len(batch)) / len(lists))

    async def remove_everywhere(self, workspace_id: str, model_key: str) -> None:
        """Remove an object's items from every profile of the workspace (SCAN + script)."""
        head = f"{hotstate.workspace_prefix(workspace_id)}p:"
        batch: list[tuple[int | str, Sequence[dict[str, Any]]]] = []
        async for key in self._redis.scan_iter(match=f"{head}*:recs", count=1000):
            text = key.decode() if isinstance(key, bytes) else key
            batch.append((text[len(head) : -len(":recs")], []))
        await self.replace(workspace_id, model_key, batch)
