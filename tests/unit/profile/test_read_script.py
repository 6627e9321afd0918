"""The read script also runs on the embedded in-process store (`make run`)."""

from __future__ import annotations

import fakeredis
import orjson
import pytest

from services.profile.hotread import HotProfiles
from services.profile.model import Identifier, ProfileQuery, Section
from services.shared import hotstate

pytestmark = pytest.mark.unit


async def test_script_resolves_redirects_and_joins_json_on_the_embedded_store() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    ws = "ws_embedded"
    await redis.set(hotstate.identity_key(ws, "email", "a@b.c"), "1")
    await redis.set(hotstate.merged_key(ws, "1"), "2")
    await redis.hset(
        hotstate.profile_key(ws, 2, "traits"),
        mapping={"name": orjson.dumps('A/"B"'), "n": orjson.dumps(2**62)},
    )
    await redis.hset(hotstate.profile_key(ws, 2, "audiences"), mapping={"vip": "17"})
    await redis.hset(hotstate.profile_key(ws, 2, "ids"), mapping={"email:a@b.c": "1"})
    hot = HotProfiles(redis)
    found = await hot.read(
        ws,
        [Identifier("email", "a@b.c"), Identifier("email", "nobody")],
        ProfileQuery(frozenset({Section.TRAITS, Section.AUDIENCES, Section.IDENTIFIERS})),
    )
    profile, missing = found
    assert missing is None
    assert profile is not None and profile.profile_id == "2"
    assert orjson.loads(profile.traits or b"") == {"name": 'A/"B"', "n": 2**62}
    assert profile.computed_traits is None
    assert profile.audiences == {"vip": 17}
    assert profile.identifiers == [Identifier("email", "a@b.c")]
    masked = await hot.read(
        ws, [Identifier("email", "a@b.c")], ProfileQuery(frozenset({Section.TRAITS}), ("n", "x"))
    )
    assert masked[0] is not None and orjson.loads(masked[0].traits or b"") == {"n": 2**62}
    await redis.aclose()
