"""Segmentation's share of the hot profile state in Redis (services/shared/hotstate.py):
each profile's ``audiences`` hash (audience key -> entered_at_us) and ``computed`` hash
(computed trait key -> JSON value), read by the profile service.

A batch of changes is one field of many profile hashes set or removed, so it goes out
as one Lua script call per CHUNK profiles with the changes packed into a single
argument (``pid TAB value LF`` lines; JSON never holds a raw tab or newline): redis-py
packs each argument in Python at ~4 us apiece, which made a million separate commands
or arguments cost seconds. As ingest's hot-state script does, KEYS[1] is the
workspace's key prefix (its hash tag routes the call on Redis Cluster) and the script
builds the profile keys from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from redis.asyncio import Redis

from services.shared.hotstate import audience_config_key, holdouts_key, workspace_prefix

# Profiles per script call: bounds the time one call holds Redis (~10 ms) and its size.
CHUNK = 10_000

# KEYS[1]: the workspace prefix; ARGV[1]: the section (audiences | computed); ARGV[2]:
# the field; ARGV[3]: "pid\tvalue\n" lines, an empty value removing the field. Each
# change drops the profile's wire cache (services.shared.hotstate: a cached encoding
# never outlives what it encodes).
_SET_FIELD = r"""
local prefix = KEYS[1] .. 'p:'
local section = ':' .. ARGV[1]
local field = ARGV[2]
for pid, value in string.gmatch(ARGV[3], '([^\t\n]+)\t([^\n]*)\n') do
  if value == '' then
    redis.call('HDEL', prefix .. pid .. section, field)
  else
    redis.call('HSET', prefix .. pid .. section, field, value)
  end
  redis.call('DEL', prefix .. pid .. ':wire')
end
return 0
"""


class HotState:
    """Writes membership and computed-value changes to the profiles' hot state."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._set_field = redis.register_script(_SET_FIELD)

    async def clear(self, ws: str) -> None:
        """Remove every profile's audiences and computed hashes in the workspace, and
        the wire caches that may encode them (before a rebuild writes them again)."""
        pattern = f"{workspace_prefix(ws)}p:*"
        doomed: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            if key.endswith((b":audiences", b":computed", b":wire")):
                doomed.append(key)
            if len(doomed) >= 1000:
                await self._redis.delete(*doomed)
                doomed.clear()
        if doomed:
            await self._redis.delete(*doomed)

    async def _run(self, ws: str, section: str, field: str, values: dict[int, bytes]) -> None:
        """Set `field` of each profile's `section` hash to its value (b"" removes it)."""
        items = list(values.items())
        prefix = workspace_prefix(ws)
        for start in range(0, len(items), CHUNK):
            lines = b"".join(b"%d\t%s\n" % (p, v) for p, v in items[start : start + CHUNK])
            await self._set_field(keys=[prefix], args=[section, field, lines])

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

    async def publish_audience_config(self, ws: str, config: Mapping[str, Any]) -> str:
        """Publish what the profile service evaluates per request (context audience
        definitions in dependency order, holdout shares) under a version that is the
        hash of its content; both fields in one HSET, so a reader never sees a version
        with another config. Returns the version."""
        text = orjson.dumps(config, option=orjson.OPT_SORT_KEYS)
        version = hashlib.sha1(text, usedforsecurity=False).hexdigest()[:16]
        holdouts = {k: repr(float(v)) for k, v in config.get("holdouts", {}).items()}
        # One transaction: the read script never sees a version with other shares.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(audience_config_key(ws), mapping={"version": version, "config": text})
            pipe.delete(holdouts_key(ws))
            if holdouts:
                pipe.hset(holdouts_key(ws), mapping=holdouts)
            await pipe.execute()
        return version
