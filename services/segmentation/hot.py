"""Segmentation's share of the hot profile state in Redis (services/shared/hotstate.py):
each profile's ``audiences`` hash (audience key -> entered_at_us) and ``computed`` hash
(computed trait key -> JSON value), read by the profile service.

A batch of changes is one field of many profile hashes set or removed, so it goes out
as one Lua script call per CHUNK profiles (the hashes as KEYS, the values as ARGV):
a whole-workspace recompute changing a million memberships is ~100 calls instead of a
million pipelined commands, each of which costs redis-py several microseconds to build
and parse. Every key of a workspace shares its hash tag, so the script is Cluster-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from redis.asyncio import Redis

from services.shared.hotstate import profile_key

# Profiles per script call: bounds the time one call holds Redis (~10 ms) and its size.
CHUNK = 10_000

# KEYS: profile hashes; ARGV[1]: the field; ARGV[i + 1]: KEYS[i]'s new value, or "" to
# remove the field.
_SET_FIELD = """
local field = ARGV[1]
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  if value == '' then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, value)
  end
end
return #KEYS
"""


class HotState:
    """Writes membership and computed-value changes to the profiles' hot state."""

    def __init__(self, redis: Redis) -> None:
        self._set_field = redis.register_script(_SET_FIELD)

    async def _run(self, ws: str, section: str, field: str, values: dict[int, bytes]) -> None:
        """Set `field` of each profile's `section` hash to its value (b"" removes it)."""
        items = list(values.items())
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            await self._set_field(
                keys=[profile_key(ws, p, section) for p, _ in chunk],
                args=[field, *[v for _, v in chunk]],
            )

    async def memberships(
        self,
        ws: str,
        audience_key: str,
        entered: Mapping[int, int],
        exited: Iterable[int],
    ) -> None:
        """Add `entered` (profile -> entered_at_us) and remove `exited` from the
        profiles' audiences hashes."""
        values = dict.fromkeys(exited, b"")
        values.update((p, str(at).encode()) for p, at in entered.items())
        await self._run(ws, "audiences", audience_key, values)

    async def computed(
        self, ws: str, key: str, changed: Mapping[int, Any], removed: Iterable[int]
    ) -> None:
        """Set the changed values (a null value is removed: absent means no value)."""
        values = dict.fromkeys(removed, b"")
        values.update((p, b"" if v is None else orjson.dumps(v)) for p, v in changed.items())
        await self._run(ws, "computed", key, values)
