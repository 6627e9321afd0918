"""The hot path: reading profiles from Redis in exactly one round trip.

One Lua script (sent once, then called by SHA: EVALSHA, falling back to EVAL on
NOSCRIPT) resolves each identifier to its profile id, follows
merge redirects to the survivor, and returns the asked-for sections. Trait and
computed-trait hashes hold JSON text per key, so the script joins them into one JSON
object by concatenation: nothing is decoded in Lua and nothing per field in Python;
the bytes go to the wire as they are. Key names come from services.shared.hotstate.

The script call goes over the process's pipelined connection
(services.shared.redis_pipelined) when there is one: that round trip was the largest
remaining server cost of a GetProfile through redis-py. With memory:// (no such
connection) or while tracing records (so the call keeps its Redis span) it goes
through redis-py. Either way a lost Redis connection is UNAVAILABLE to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.profile.model import (
    HotProfile,
    Identifier,
    PredictionScore,
    ProfileQuery,
    Recommendation,
    Section,
)
from services.shared import hotstate
from services.shared.errors import Unavailable
from services.shared.redis_pipelined import PipelinedConnection

# A chain of merges longer than this is a bug in the writer; stop rather than loop.
MAX_MERGE_HOPS = 16

# Section flags passed to the script (one character each).
_FLAGS = {
    Section.TRAITS: "t",
    Section.COMPUTED_TRAITS: "c",
    Section.AUDIENCES: "a",
    Section.PREDICTIONS: "p",
    Section.RECOMMENDATIONS: "r",
    Section.IDENTIFIERS: "i",
}

# KEYS: identity keys (hs:{ws}:id:<type>:<value>), one per identifier.
# ARGV[1]: the workspace prefix hs:{ws}:   ARGV[2]: section flags   ARGV[3..]: trait keys.
# Returns one entry per identifier: false when unknown, else
#   {profile_id, last_seen_us, traits, computed, audiences, predictions, recs, ids}
# where every section not asked for is false and JSON sections are JSON text.
# Profile keys are derived from the resolved id, which is why they are not in KEYS;
# they share the {ws} hash tag of the identity keys, so this holds on Redis Cluster.
READ_PROFILES_LUA = """
local prefix = ARGV[1]
local flags = ARGV[2]
local max_hops = MAX_MERGE_HOPS
local mask = {}
for i = 3, #ARGV do mask[#mask + 1] = ARGV[i] end

local function object_from_pairs(flat)
  local parts = {}
  for i = 1, #flat, 2 do
    parts[#parts + 1] = cjson.encode(flat[i]) .. ':' .. flat[i + 1]
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function masked_object(key)
  local values = redis.call('HMGET', key, unpack(mask))
  local parts = {}
  for i = 1, #mask do
    if values[i] then
      parts[#parts + 1] = cjson.encode(mask[i]) .. ':' .. values[i]
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function has(flag)
  return string.find(flags, flag, 1, true) ~= nil
end

local results = {}
for k = 1, #KEYS do
  local pid = redis.call('GET', KEYS[k])
  if not pid then
    results[k] = false
  else
    for _ = 1, max_hops do
      local survivor = redis.call('GET', prefix .. 'merged:' .. pid)
      if not survivor then break end
      pid = survivor
    end
    local p = prefix .. 'p:' .. pid .. ':'
    local row = {pid, redis.call('HGET', p .. 'meta', 'last_seen_us'),
                 false, false, false, false, false, false}
    if has('t') then
      if #mask > 0 then
        row[3] = masked_object(p .. 'traits')
      else
        row[3] = object_from_pairs(redis.call('HGETALL', p .. 'traits'))
      end
    end
    if has('c') then row[4] = object_from_pairs(redis.call('HGETALL', p .. 'computed')) end
    if has('a') then row[5] = object_from_pairs(redis.call('HGETALL', p .. 'audiences')) end
    if has('p') then row[6] = object_from_pairs(redis.call('HGETALL', p .. 'predictions')) end
    if has('r') then row[7] = redis.call('GET', p .. 'recs') end
    if has('i') then
      local ids = redis.call('HKEYS', p .. 'ids')
      local parts = {}
      for i = 1, #ids do parts[i] = cjson.encode(ids[i]) end
      row[8] = '[' .. table.concat(parts, ',') .. ']'
    end
    results[k] = row
  end
end
return results
""".replace("MAX_MERGE_HOPS", str(MAX_MERGE_HOPS))


class HotProfiles:
    """Reads profiles from the hot state of a workspace."""

    def __init__(self, redis: Redis, pipelined: PipelinedConnection | None = None) -> None:
        """Reads go over `pipelined` when given, else through `redis` (which does the rest)."""
        self._redis = redis
        self._pipelined = pipelined
        self._script = redis.register_script(READ_PROFILES_LUA)

    async def read(
        self, workspace_id: str, identifiers: Sequence[Identifier], query: ProfileQuery
    ) -> list[HotProfile | None]:
        """The profiles of `identifiers` in order (None where unknown), in one round trip."""
        keys = [hotstate.identity_key(workspace_id, i.type, i.value) for i in identifiers]
        flags = "".join(_FLAGS[section] for section in query.sections)
        args = [hotstate.workspace_prefix(workspace_id), flags, *query.trait_keys]
        try:
            if self._pipelined is None:
                replies = await self._script(keys=keys, args=args)
            else:
                replies = await self._run_pipelined(keys, args)
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise Unavailable("the profile store is unavailable; retry") from error
        return [None if reply is None else _hot_profile(reply) for reply in replies]

    async def _run_pipelined(self, keys: list[str], args: list[str]) -> list[list[bytes | None]]:
        # The script is loaded once per Redis (and again after a SCRIPT FLUSH or a
        # restart): EVAL both runs and caches it, so later calls find the SHA.
        assert self._pipelined is not None
        try:
            return await self._pipelined.execute(
                "EVALSHA", self._script.sha, len(keys), *keys, *args
            )
        except NoScriptError:
            return await self._pipelined.execute("EVAL", READ_PROFILES_LUA, len(keys), *keys, *args)

    async def resolve(self, workspace_id: str, identifier: Identifier) -> HotProfile | None:
        """The profile id and identifiers of one identifier (None when unknown)."""
        query = ProfileQuery(frozenset({Section.IDENTIFIERS}))
        return (await self.read(workspace_id, [identifier], query))[0]

    async def erase(self, workspace_id: str, profile_ids: Sequence[int | str]) -> None:
        """Delete the hot state of these profiles and every identity key pointing at them.

        The identity keys are found through each profile's ids hash (identifiers ingest
        knows but Postgres may not have committed yet are covered too) and, for merged
        ids, their redirect keys go as well. Two round trips: read the ids, then delete.
        """
        if not profile_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for pid in profile_ids:
                pipe.hkeys(hotstate.profile_key(workspace_id, pid, "ids"))
            id_lists = await pipe.execute()
        doomed = [
            hotstate.profile_key(workspace_id, pid, section)
            for pid in profile_ids
            for section in hotstate.PROFILE_SECTIONS
        ]
        doomed += [hotstate.merged_key(workspace_id, pid) for pid in profile_ids]
        for ids in id_lists:
            for typed in ids:
                id_type, _, id_value = typed.decode().partition(":")
                doomed.append(hotstate.identity_key(workspace_id, id_type, id_value))
        await self._redis.delete(*doomed)

    async def erase_identities(
        self, workspace_id: str, identifiers: Sequence[tuple[str, str]]
    ) -> None:
        """Delete identity keys (those Postgres knew of; the ids hash may lack some)."""
        if identifiers:
            await self._redis.delete(
                *(hotstate.identity_key(workspace_id, t, v) for t, v in identifiers)
            )


def _hot_profile(reply: list[bytes | None]) -> HotProfile:
    """Translate one script row; sections not asked for stay at their defaults."""
    pid, last_seen, traits, computed, audiences, predictions, recs, ids = reply
    profile = HotProfile(
        profile_id=pid.decode() if pid is not None else "",
        last_seen_us=int(last_seen) if last_seen else None,
        traits=traits,
        computed_traits=computed,
    )
    if audiences is not None:
        profile.audiences = orjson.loads(audiences)
    if predictions is not None:
        profile.predictions = [
            PredictionScore(
                key=key,
                probability=float(score.get("probability", 0.0)),
                percentile=float(score.get("percentile", 0.0)),
                scored_at_us=score.get("scored_at_us"),
                top_features=tuple(score.get("top_features") or ()),
            )
            for key, score in orjson.loads(predictions).items()
        ]
    if recs is not None:
        profile.recommendations = [
            Recommendation(
                str(item["item_id"]), float(item.get("score", 0.0)), bool(item.get("consumed"))
            )
            for item in orjson.loads(recs)
        ]
    if ids is not None:
        profile.identifiers = [
            Identifier(*typed.split(":", 1)) for typed in orjson.loads(ids) if ":" in typed
        ]
    return profile
