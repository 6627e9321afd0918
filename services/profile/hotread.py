"""The hot path: reading profiles from Redis in exactly one round trip.

One Lua script (sent once, then called by SHA: EVALSHA, falling back to EVAL on
NOSCRIPT) resolves each identifier to its profile id, follows
merge redirects to the survivor, and returns the asked-for sections. Trait and
computed-trait hashes hold JSON text per key, so the script joins them into one JSON
object by concatenation: nothing is decoded in Lua and nothing per field in Python;
the bytes go to the wire as they are. Key names come from services.shared.hotstate.

For GetProfile (`read_encoded`) the script goes one step further and returns the
serialized audiences.v1.Profile message itself: this module is where the hot state's
layout meets the wire format, so the encoding (field numbers of profile.proto,
varints, doubles, timestamps) lives here, in the script, and nothing else in the
process touches the message (docs/profile.md).

The script call goes over the process's pipelined connection
(services.shared.redis_pipelined) when there is one, traced or not: that round trip
was the largest remaining server cost of a GetProfile through redis-py. With a
rediss:// or unix:// URL (no such connection) it goes through redis-py. Either way a
lost Redis connection is UNAVAILABLE to the caller.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

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
from services.shared import hotstate, streams
from services.shared.errors import Unavailable
from services.shared.redis_pipelined import PipelinedConnection

# A chain of merges longer than this is a bug in the writer; stop rather than loop.
MAX_MERGE_HOPS = 16
# Stream entries per XDEL of an erasure: bounds one command's time in Redis.
STREAM_DELETE_CHUNK = 1000

# Section flags passed to the script (one character each).
_FLAGS = {
    Section.TRAITS: "t",
    Section.COMPUTED_TRAITS: "c",
    Section.AUDIENCES: "a",
    Section.PREDICTIONS: "p",
    Section.RECOMMENDATIONS: "r",
    Section.IDENTIFIERS: "i",
}
# Asks the script for the serialized Profile message instead of JSON rows.
_WIRE = "w"
# With "w": also the profile id, its stored audience keys and the version of the
# workspace's published context audiences, for request-time evaluation.
_CONTEXT = "x"


@functools.cache
def _flags(sections: frozenset[Section]) -> str:
    # Few distinct section sets exist (one per `include` a caller sends), so the
    # string is built once per set rather than per call.
    return "".join(sorted(_FLAGS[section] for section in sections))


# KEYS: identity keys (hs:{ws}:id:<type>:<value>), one per identifier.
# ARGV[1]: the workspace prefix hs:{ws}:   ARGV[2]: flags   ARGV[3..]: trait keys (a mask).
# Flags: one character per section asked for (see _FLAGS), and "w" for the wire form.
# Returns one entry per identifier: false when unknown, else
#   without "w": {profile_id, last_seen_us, traits, computed, audiences, predictions,
#                 recs, ids, popular} where every section not asked for is false and
#                 the sections are JSON text; popular: the keys of the objects whose
#                 items came from the workspace's popular lists, comma-separated;
#   with "w": the serialized audiences.v1.Profile message (GetProfile's view: consumed
#             recommendations left out), ready to be the gRPC response as it is.
# Profile keys are derived from the resolved id, which is why they are not in KEYS;
# they share the {ws} hash tag of the identity keys, so this holds on Redis Cluster.
READ_PROFILES_LUA = (
    """
local prefix = ARGV[1]
local flags = ARGV[2]
-- The context flag changes what is returned, not the encoding: the wire cache is
-- keyed without it.
local cache_flags = (string.gsub(flags, 'x', ''))

-- The version of the workspace's published audience settings (context audiences,
-- holdout shares: services.shared.hotstate), read at most once per call.
local config_version
local function audience_config_version()
  if config_version == nil then
    config_version = redis.call('HGET', prefix .. 'audcfg', 'version') or ''
  end
  return config_version
end
-- The workspace's popular recommendation lists (served to a profile without a list
-- of its own for an object): their version, read at most once per call.
local popular_key = prefix .. 'recs_popular'
local popular_version_value
local function popular_version()
  if popular_version_value == nil then
    popular_version_value = redis.call('HGET', popular_key, 'POPULAR_VERSION_FIELD') or ''
  end
  return popular_version_value
end

-- An object's popular items (list members text) for a profile that consumed some of
-- them since the training (its recs_consumed set holds "<object>:<item id>"): those
-- left out, the list refilled from the object's reserve to its length. Decoded and
-- encoded again only when something is left out; '' when nothing is left.
local function unconsumed(model, text, reserve, consumed)
  local items = cjson.decode('[' .. text .. ']')
  local size = #items
  if reserve then
    for _, item in ipairs(cjson.decode('[' .. reserve .. ']')) do items[#items + 1] = item end
  end
  local kept, dropped = {}, false
  for _, item in ipairs(items) do
    if #kept >= size then break end
    if redis.call('SISMEMBER', consumed, model .. ':' .. tostring(item.item_id)) == 1 then
      dropped = true
    else
      kept[#kept + 1] = item
    end
  end
  if not dropped then return text end
  for i = 1, #kept do kept[i] = cjson.encode(kept[i]) end
  return table.concat(kept, ',')
end

-- A profile's recommendations as JSON list text (false when none), and the keys of
-- the objects served from the popular lists, comma-separated ('' when none): its own
-- items of every object (recs, the join of recs_by_model in key order) and, for each
-- object with a popular list but no list of the profile's own, the popular items
-- without those the profile consumed since (recs_consumed), in the same key order.
-- Nothing is decoded unless the profile consumed something.
local function recs_json(p)
  local own = redis.call('GET', p .. 'recs')
  if popular_version() == '' then return own, '' end
  local by_model = p .. 'recs_by_model'
  local names = redis.call('HKEYS', popular_key)
  local missing = {}
  for i = 1, #names do
    if names[i] ~= 'POPULAR_VERSION_FIELD' and redis.call('HEXISTS', by_model, names[i]) == 0 then
      missing[#missing + 1] = names[i]
    end
  end
  if #missing == 0 then return own, '' end
  local flat = redis.call('HGETALL', by_model)
  if #flat == 0 and own then return own, '' end  -- a list written without recs_by_model
  local keys, items = {}, {}
  for i = 1, #flat, 2 do
    keys[#keys + 1] = flat[i]
    items[flat[i]] = flat[i + 1]
  end
  local popular = redis.call('HMGET', popular_key, unpack(missing))
  local consumed = p .. 'recs_consumed'
  if redis.call('EXISTS', consumed) == 1 then
    local reserve = redis.call('HMGET', prefix .. 'recs_popular_more', unpack(missing))
    for i = 1, #missing do
      popular[i] = unconsumed(missing[i], popular[i], reserve[i], consumed)
    end
  end
  for i = 1, #missing do
    if popular[i] ~= '' then
      keys[#keys + 1] = missing[i]
      items[missing[i]] = popular[i]
    end
  end
  table.sort(keys)
  table.sort(missing)
  local parts = {}
  for i, key in ipairs(keys) do parts[i] = items[key] end
  return '[' .. table.concat(parts, ',') .. ']', table.concat(missing, ',')
end

local max_hops = MAX_MERGE_HOPS
local mask = {}
for i = 3, #ARGV do mask[#mask + 1] = ARGV[i] end

local function has(flag)
  return string.find(flags, flag, 1, true) ~= nil
end

-- ---- Protocol Buffers wire format (protobuf.dev/programming-guides/encoding) ----
-- Lua 5.1 numbers are doubles: every integer here is below 2^53, so exact.
local char, floor = string.char, math.floor

-- A varint of an int64 (negatives as 64-bit two's complement: ten bytes).
-- Lengths, and a timestamp's nanos and seconds (for microsecond instants below 2^53),
-- are non-negative and below 2^35: five bytes at most, unrolled (no loop, no table).
local digits = {}
local function varint(n)
  if n >= 0 and n < 34359738368 then
    if n < 128 then return char(n) end
    local b1 = n % 128; n = (n - b1) / 128
    if n < 128 then return char(b1 + 128, n) end
    local b2 = n % 128; n = (n - b2) / 128
    if n < 128 then return char(b1 + 128, b2 + 128, n) end
    local b3 = n % 128; n = (n - b3) / 128
    if n < 128 then return char(b1 + 128, b2 + 128, b3 + 128, n) end
    local b4 = n % 128
    return char(b1 + 128, b2 + 128, b3 + 128, b4 + 128, (n - b4) / 128)
  end
  local lo = n % 4294967296  -- the low and high 32 bits of n (of 2^64 + n if negative)
  local hi = ((n - lo) / 4294967296) % 4294967296
  local k = 0
  while hi > 0 or lo >= 128 do
    local low7 = lo % 128
    k = k + 1
    digits[k] = low7 + 128
    lo = (lo - low7) / 128 + (hi % 128) * 33554432
    hi = floor(hi / 128)
  end
  digits[k + 1] = lo
  return char(unpack(digits, 1, k + 1))
end

-- A length-delimited field (string, bytes, sub-message): tag, length, bytes.
local function delimited(tag, bytes)
  return tag .. varint(#bytes) .. bytes
end

-- A proto3 string field: the empty string is the default and is not sent.
local function text(tag, value)
  if value == '' then return '' end
  return tag .. varint(#value) .. value
end

-- google.protobuf.Timestamp {seconds = 1, nanos = 2} of integer microseconds.
local function timestamp(us)
  local seconds = floor(us / 1000000)
  local nanos = (us - seconds * 1000000) * 1000
  if nanos == 0 then
    if seconds == 0 then return '' end
    return '\\8' .. varint(seconds)
  end
  if seconds == 0 then return '\\16' .. varint(nanos) end
  return '\\8' .. varint(seconds) .. '\\16' .. varint(nanos)
end

-- Everything that reads sections: built only when a read needs it (a warm GetProfile
-- does not), since defining these functions is a good part of a short call's cost.
local built
local function encoders()
  if built then return built end
  built = (function()
    -- {key1, value1, key2, value2, ...} of a hash: every field, or the masked ones.
    local function pairs_of(key, masked)
      if not masked or #mask == 0 then return redis.call('HGETALL', key) end
      local values = redis.call('HMGET', key, unpack(mask))
      local flat = {}
      for i = 1, #mask do
        if values[i] then
          flat[#flat + 1] = mask[i]
          flat[#flat + 1] = values[i]
        end
      end
      return flat
    end

    -- Values are JSON text already: join them into one object without decoding them.
    local function object_from_pairs(flat)
      local parts = {}
      for i = 1, #flat, 2 do
        parts[#parts + 1] = cjson.encode(flat[i]) .. ':' .. flat[i + 1]
      end
      return '{' .. table.concat(parts, ',') .. '}'
    end

    -- A double field (fixed64, IEEE 754 little-endian; Redis's Lua has no string.pack
    -- for every store this runs on). Zero is the default and is not sent.
    local function double(tag, x)
      if type(x) ~= 'number' or (x == 0 and 1 / x > 0) then return '' end
      if x ~= x then return tag .. '\\0\\0\\0\\0\\0\\0\\248\\127' end
      local sign = 0
      if x < 0 or 1 / x < 0 then sign = 128; x = -x end
      if x == math.huge then return tag .. '\\0\\0\\0\\0\\0\\0\\240' .. char(127 + sign) end
      local m, e = math.frexp(x)  -- x = m * 2^e, 0.5 <= m < 1
      local exponent, fraction = e + 1022, 0
      if x == 0 then
        exponent = 0
      elseif exponent <= 0 then  -- subnormal: x = fraction * 2^-1074
        fraction = math.ldexp(m, e + 1074)
        exponent = 0
      else
        fraction = (m * 2 - 1) * 4503599627370496  -- 2^52
      end
      local f = fraction
      local b1 = f % 256; f = (f - b1) / 256
      local b2 = f % 256; f = (f - b2) / 256
      local b3 = f % 256; f = (f - b3) / 256
      local b4 = f % 256; f = (f - b4) / 256
      local b5 = f % 256; f = (f - b5) / 256
      local b6 = f % 256; f = (f - b6) / 256
      return tag .. char(b1, b2, b3, b4, b5, b6, f + (exponent % 16) * 16,
                         floor(exponent / 16) + sign)
    end

    -- What Python's bool() says of a decoded JSON scalar.
    local function truthy(v)
      return v ~= nil and v ~= false and v ~= cjson.null and v ~= 0 and v ~= ''
    end

    -- ---- Sections of audiences.v1.Profile, each as its encoded field(s) ----
    local function identifiers_wire(p)                                  -- 2 identifiers
      local out = {}
      local ids = redis.call('HKEYS', p .. 'ids')
      for i = 1, #ids do
        local at = string.find(ids[i], ':', 1, true)
        if at then
          out[#out + 1] = delimited('\\18', text('\\10', string.sub(ids[i], 1, at - 1))
            .. text('\\18', string.sub(ids[i], at + 1)))
        end
      end
      return table.concat(out)
    end

    local function traits_wire(p)                                       -- 3 traits (JSON)
      return delimited('\\26', object_from_pairs(pairs_of(p .. 'traits', true)))
    end

    local function computed_wire(p)                                     -- 4 computed_traits
      return delimited('\\34', object_from_pairs(pairs_of(p .. 'computed', false)))
    end

    -- SHA-1 as hex: Redis has redis.sha1hex; the embedded store of `make run` (Lua 5.1,
    -- no bit library) gets this arithmetic version, slower but the same digest
    -- (tests/unit/profile/test_read_script.py holds the two equal).
    local function sha1hex_arith(msg)
      local floor = math.floor
      local M = 4294967296
      local function bitop(a, b, op)
        local r, v = 0, 1
        for _ = 1, 32 do
          local x, y = a % 2, b % 2
          if op(x, y) then r = r + v end
          a, b, v = (a - x) / 2, (b - y) / 2, v * 2
        end
        return r
      end
      local function bxor(a, b) return bitop(a, b, function(x, y) return x ~= y end) end
      local function band(a, b) return bitop(a, b, function(x, y) return x == 1 and y == 1 end) end
      local function bor(a, b) return bitop(a, b, function(x, y) return x == 1 or y == 1 end) end
      local function rol(a, n)
        local p = 2 ^ (32 - n)
        local hi = floor(a / p)
        return (a - hi * p) * 2 ^ n + hi
      end
      local length = #msg * 8
      msg = msg .. '\\128' .. string.rep('\\0', (55 - #msg) % 64)
      for i = 7, 0, -1 do msg = msg .. string.char(floor(length / 256 ^ i) % 256) end
      local h0, h1, h2, h3, h4 = 1732584193, 4023233417, 2562383102, 271733878, 3285377520
      for chunk = 1, #msg, 64 do
        local w = {}
        for i = 0, 15 do
          local a, b, c, d = string.byte(msg, chunk + i * 4, chunk + i * 4 + 3)
          w[i] = ((a * 256 + b) * 256 + c) * 256 + d
        end
        for i = 16, 79 do
          w[i] = rol(bxor(bxor(w[i - 3], w[i - 8]), bxor(w[i - 14], w[i - 16])), 1)
        end
        local a, b, c, d, e = h0, h1, h2, h3, h4
        for i = 0, 79 do
          local f, k
          if i < 20 then f, k = bor(band(b, c), band(M - 1 - b, d)), 1518500249
          elseif i < 40 then f, k = bxor(bxor(b, c), d), 1859775393
          elseif i < 60 then f, k = bor(bor(band(b, c), band(b, d)), band(c, d)), 2400959708
          else f, k = bxor(bxor(b, c), d), 3395469782 end
          local t = (rol(a, 5) + f + e + k + w[i]) % M
          a, b, c, d, e = t, a, rol(b, 30), c, d
        end
        h0, h1, h2, h3, h4 = (h0 + a) % M, (h1 + b) % M, (h2 + c) % M, (h3 + d) % M, (h4 + e) % M
      end
      return string.format('%08x%08x%08x%08x%08x', h0, h1, h2, h3, h4)
    end
    local sha1hex = redis.sha1hex or sha1hex_arith

    -- Holdout shares by audience key (services.shared.holdout: the same hash).
    local shares
    local function holdout(key, pid)
      if shares == nil then
        shares = {}
        local flat = redis.call('HGETALL', prefix .. 'holdouts')
        for i = 1, #flat, 2 do shares[flat[i]] = tonumber(flat[i + 1]) end
      end
      local share = shares[key]
      if not share or share <= 0 then return false end
      return tonumber(string.sub(sha1hex(key .. ':' .. pid), 1, 8), 16) / 4294967296 < share
    end

    local function audiences_wire(p, pid)                               -- 5 audiences
      local out = {}
      local flat = redis.call('HGETALL', p .. 'audiences')
      for i = 1, #flat, 2 do
        -- One concatenation per membership (a timestamp is under 128 bytes: one length byte).
        local key, stamp = flat[i], timestamp(tonumber(flat[i + 1]))
        local held = ''
        if holdout(key, pid) then held = '\\24\\1' end                  -- 3 holdout = true
        if key == '' then
          out[#out + 1] = '\\42' .. char(2 + #stamp + #held) .. '\\18' .. char(#stamp) .. stamp
            .. held
        else
          local key_length = varint(#key)
          out[#out + 1] = '\\42' .. varint(3 + #key_length + #key + #stamp + #held) .. '\\10'
            .. key_length .. key .. '\\18' .. char(#stamp) .. stamp .. held
        end
      end
      return table.concat(out)
    end

    local function predictions_wire(p)                                  -- 6 predictions
      local out = {}
      local flat = redis.call('HGETALL', p .. 'predictions')
      for i = 1, #flat, 2 do
        local score = cjson.decode(flat[i + 1])
        local body = text('\\10', flat[i]) .. double('\\17', score.probability)
          .. double('\\25', score.percentile)
        if type(score.scored_at_us) == 'number' then
          body = body .. delimited('\\34', timestamp(score.scored_at_us))
        end
        if type(score.top_features) == 'table' then
          for _, feature in ipairs(score.top_features) do
            body = body .. delimited('\\42', tostring(feature))  -- repeated: '' is sent
          end
        end
        out[#out + 1] = delimited('\\50', body)
      end
      return table.concat(out)
    end

    local function recommendations_wire(p)                              -- 7 recommendations
      local out = {}
      local recs, popular = recs_json(p)
      local from_popular = {}
      for key in string.gmatch(popular, '[^,]+') do from_popular[key] = true end
      if recs then
        for _, item in ipairs(cjson.decode(recs)) do
          if not truthy(item.consumed) then  -- the profile view leaves consumed items out
            -- metadata is JSON text inside the JSON item: passed through, never decoded.
            local body = text('\\10', tostring(item.item_id)) .. double('\\17', item.score)
            if type(item.metadata) == 'string' then body = body .. text('\\26', item.metadata) end
            if type(item.model) == 'string' then
              body = body .. text('\\34', item.model)
              if from_popular[item.model] then body = body .. '\\40\\1' end  -- 5 popular
            end
            out[#out + 1] = delimited('\\58', body)
          end
        end
      end
      return table.concat(out)
    end

    -- Section flag -> its encoder, in field-number order (the order protobuf writes).
    local order = {'i', 't', 'c', 'a', 'p', 'r'}
    local encode = {i = identifiers_wire, t = traits_wire, c = computed_wire,
                    a = audiences_wire, p = predictions_wire, r = recommendations_wire}

    -- Fields 2-7 of audiences.v1.Profile: the sections asked for, in field order.
    local function sections_wire(p, pid)
      local out = {}
      for _, flag in ipairs(order) do
        if has(flag) then out[#out + 1] = encode[flag](p, pid) end
      end
      return table.concat(out)
    end

    local function profile_row(pid, p)
      local row = {pid, redis.call('HGET', p .. 'meta', 'last_seen_us'),
                   false, false, false, false, false, false, false}
      if has('t') then row[3] = object_from_pairs(pairs_of(p .. 'traits', true)) end
      if has('c') then row[4] = object_from_pairs(pairs_of(p .. 'computed', false)) end
      if has('a') then row[5] = object_from_pairs(pairs_of(p .. 'audiences', false)) end
      if has('p') then row[6] = object_from_pairs(pairs_of(p .. 'predictions', false)) end
      if has('r') then row[7], row[9] = recs_json(p) end
      if has('i') then
        local ids = redis.call('HKEYS', p .. 'ids')
        local parts = {}
        for i = 1, #ids do parts[i] = cjson.encode(ids[i]) end
        row[8] = '[' .. table.concat(parts, ',') .. ']'
      end
      return row
    end

    return {sections_wire = sections_wire, profile_row = profile_row}
  end)()
  return built
end

-- audiences.v1.Profile: field 1 (profile_id), the sections, field 8 (last_seen).
-- Fields 2-7 are kept in the profile's wire-cache hash once encoded, under the flags
-- that asked for them (one field per `include` set); every writer of any section
-- deletes the hash in the same script as its write (services.shared.hotstate), so the
-- cached bytes are always the encoding of what is stored. A trait mask reads around
-- the cache. Writing it is best effort (pcall): on a read-only replica the read still
-- answers. last_seen changes with every event, so it is never cached.
-- A cached encoding starts with the audience config version it was built under (the
-- holdout flags depend on it) and a '|' (with recommendations, then the popular lists'
-- version and a '|'): one of another version is built again.
local function profile_wire(pid, p)
  local cache = p .. 'wire'
  local sections = false
  local tag = audience_config_version() .. '|'
  -- Recommendations may come from the popular lists: their version is in the tag too.
  if has('r') then tag = tag .. popular_version() .. '|' end
  if #mask == 0 then
    local cached = redis.call('HGET', cache, cache_flags)
    if cached and string.sub(cached, 1, #tag) == tag then
      sections = string.sub(cached, #tag + 1)
    end
  end
  if not sections then
    sections = encoders().sections_wire(p, pid)
    if #mask == 0 then
      redis.pcall('HSET', cache, cache_flags, tag .. sections)
      redis.pcall('EXPIRE', cache, WIRE_CACHE_SECONDS)
    end
  end
  local out = text('\\10', pid) .. sections
  local seen = redis.call('HGET', p .. 'meta', 'last_seen_us')
  seen = seen and tonumber(seen)
  if seen then out = out .. delimited('\\66', timestamp(seen)) end
  return out
end

local build = profile_wire
if not has('w') then build = encoders().profile_row end
local context = has('x')
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
    results[k] = build(pid, p)
    if context and has('w') then
      -- Stored audience keys, one per line (keys are [a-z0-9_]: no newline in them).
      results[k] = {results[k], pid, table.concat(redis.call('HKEYS', p .. 'audiences'), '\\n')}
    end
  end
end
if context then
  local version = audience_config_version()
  results[#KEYS + 1] = version ~= '' and version or false
end
return results
""".replace("MAX_MERGE_HOPS", str(MAX_MERGE_HOPS))
    .replace("WIRE_CACHE_SECONDS", str(hotstate.WIRE_CACHE_SECONDS))
    .replace("POPULAR_VERSION_FIELD", hotstate.POPULAR_VERSION_FIELD)
)


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
        replies = await self._run(workspace_id, keys, _flags(query.sections), query.trait_keys)
        return [None if reply is None else _hot_profile(reply) for reply in replies]

    async def read_encoded(
        self, workspace_id: str, identifier: Identifier, query: ProfileQuery
    ) -> bytes | None:
        """The profile of `identifier` as a serialized audiences.v1.Profile (None if unknown).

        The script writes the protobuf wire format itself (see READ_PROFILES_LUA), so
        the reply is the response message as it goes on the wire: no Python object
        per section, field or audience on GetProfile's path. It is the message
        `read` + the servicer would build for this query, with consumed
        recommendations left out (the profile view); the tests hold the two equal.
        """
        key = hotstate.identity_key(workspace_id, identifier.type, identifier.value)
        flags = _flags(query.sections) + _WIRE
        reply: bytes | None = (await self._run(workspace_id, [key], flags, query.trait_keys))[0]
        return reply

    async def read_for_context(
        self, workspace_id: str, identifier: Identifier, query: ProfileQuery
    ) -> tuple[bytes, str, list[str], str | None] | None:
        """read_encoded's message plus what request-time evaluation needs, in the same
        single round trip: the profile id, its stored audience keys and the version of
        the workspace's published context audiences (None when none were published).
        None if the identifier is unknown."""
        key = hotstate.identity_key(workspace_id, identifier.type, identifier.value)
        flags = _flags(query.sections) + _WIRE + _CONTEXT
        reply = await self._run(workspace_id, [key], flags, query.trait_keys)
        found, version = reply[0], reply[1]
        if found is None:
            return None
        wire, pid, keys = found
        stored = keys.decode().split("\n") if keys else []
        return wire, pid.decode(), stored, version.decode() if version is not None else None

    async def read_with_version(
        self, workspace_id: str, identifiers: Sequence[Identifier], query: ProfileQuery
    ) -> tuple[list[HotProfile | None], str | None]:
        """`read` plus the version of the workspace's published audience settings
        (context audiences, holdout shares), in the same single round trip."""
        keys = [hotstate.identity_key(workspace_id, i.type, i.value) for i in identifiers]
        flags = _flags(query.sections) + _CONTEXT
        reply = await self._run(workspace_id, keys, flags, query.trait_keys)
        version = reply[len(keys)]
        profiles = [None if found is None else _hot_profile(found) for found in reply[: len(keys)]]
        return profiles, version.decode() if version is not None else None

    async def audience_config(self, workspace_id: str) -> tuple[str, bytes] | None:
        """The published (version, config JSON) of the workspace's request-time
        audiences; None if never published. Read when the version changed, not per request."""
        version, config = await self._redis.hmget(
            hotstate.audience_config_key(workspace_id), ["version", "config"]
        )
        # The client decodes no responses (bytes in), whatever its stubs allow.
        if not isinstance(version, bytes) or not isinstance(config, bytes):
            return None
        return version.decode(), config

    async def _run(
        self, workspace_id: str, keys: list[str], flags: str, trait_keys: tuple[str, ...]
    ) -> list[Any]:
        args = [hotstate.workspace_prefix(workspace_id), flags, *trait_keys]
        pipelined = self._pipelined
        try:
            if pipelined is None:
                return await self._script(keys=keys, args=args)
            try:
                return await pipelined.execute("EVALSHA", self._script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The script is loaded once per Redis (and again after a SCRIPT FLUSH or
                # a restart): EVAL both runs and caches it, so later calls find the SHA.
                return await pipelined.execute("EVAL", READ_PROFILES_LUA, len(keys), *keys, *args)
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise Unavailable("the profile store is unavailable; retry") from error

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

    async def erase_stream_entries(self, event_seqs: Sequence[int]) -> None:
        """Delete these events' entries from the event stream (XDEL, in chunks): the
        stream keeps an event's payload until it is trimmed, and an erased person's
        must not wait for that. Entries already trimmed or never published are no-ops."""
        for start in range(0, len(event_seqs), STREAM_DELETE_CHUNK):
            chunk = event_seqs[start : start + STREAM_DELETE_CHUNK]
            ids = list(map(streams.event_entry_id, chunk))
            # Every shard's stream: the person's events may sit on several (merges).
            for stream in streams.event_streams():
                await self._redis.xdel(stream, *ids)

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
    pid, last_seen, traits, computed, audiences, predictions, recs, ids, popular = reply
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
    if popular:
        profile.popular_models = frozenset(popular.decode().split(","))
    if recs is not None:
        profile.recommendations = [
            _recommendation(item, profile.popular_models) for item in orjson.loads(recs)
        ]
    if ids is not None:
        profile.identifiers = [
            Identifier(*typed.split(":", 1)) for typed in orjson.loads(ids) if ":" in typed
        ]
    return profile


def _recommendation(item: dict[str, Any], popular_models: frozenset[str]) -> Recommendation:
    model = item.get("model")
    model_key = model if isinstance(model, str) else ""
    return Recommendation(
        str(item["item_id"]),
        float(item.get("score", 0.0)),
        bool(item.get("consumed")),
        metadata=item.get("metadata") if isinstance(item.get("metadata"), str) else None,
        model_key=model_key,
        popular=model_key in popular_models,
    )
