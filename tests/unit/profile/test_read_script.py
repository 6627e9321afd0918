"""The read script also runs on the embedded in-process store (`make run`)."""

from __future__ import annotations

import fakeredis
import orjson
import pytest
from audiences.v1 import profile_pb2

from services.profile.hotread import HotProfiles
from services.profile.model import Identifier, ProfileQuery, Section
from services.shared import hotstate, streams

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


async def test_holdout_flags_on_the_embedded_store_match_the_library() -> None:
    # The embedded store has no redis.sha1hex: the script's arithmetic SHA-1 stands in.
    from audiences.v1 import profile_pb2

    from services.shared.holdout import in_holdout

    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    ws = "ws_holdout"
    await redis.hset(hotstate.holdouts_key(ws), mapping={"vip": "0.5"})
    hot = HotProfiles(redis)
    flags = {}
    for pid in range(1, 21):
        await redis.set(hotstate.identity_key(ws, "user_id", f"u{pid}"), str(pid))
        await redis.hset(hotstate.profile_key(ws, pid, "audiences"), mapping={"vip": "17"})
        encoded = await hot.read_encoded(
            ws, Identifier("user_id", f"u{pid}"), ProfileQuery(frozenset({Section.AUDIENCES}))
        )
        assert encoded is not None
        (membership,) = profile_pb2.Profile.FromString(encoded).audiences
        flags[str(pid)] = membership.holdout
    assert flags == {pid: in_holdout("vip", pid, 0.5) for pid in flags}
    assert 0 < sum(flags.values()) < len(flags)


async def test_popular_recommendations_fill_in_for_missing_lists_on_the_embedded_store() -> None:
    from services.profile.recommendations.hotwrite import RecommendationWriter

    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    ws = "ws_embedded"
    await redis.set(hotstate.identity_key(ws, "user_id", "u"), "7")
    writer = RecommendationWriter(redis)

    def item(name: str, model: str) -> dict[str, object]:
        return {"item_id": name, "score": 0.5, "model": model, "metadata": "{}"}

    # Profile 7 has its own list of object b; the workspace has popular lists of a and b.
    await writer.replace(ws, "b", [(7, [item("own", "b")])])
    await writer.set_popular(ws, "a", [item("pop_a", "a")])
    await writer.set_popular(ws, "b", [item("pop_b", "b")])
    hot = HotProfiles(redis)
    query = ProfileQuery(frozenset({Section.RECOMMENDATIONS}))
    (profile,) = await hot.read(ws, [Identifier("user_id", "u")], query)
    assert profile is not None and profile.recommendations is not None
    assert [(r.model_key, r.item_id) for r in profile.recommendations] == [
        ("a", "pop_a"),
        ("b", "own"),
    ]
    assert profile.popular_models == frozenset({"a"})
    assert [r.popular for r in profile.recommendations] == [True, False]
    # GetProfile's encoding says the same, and a new popular list is not hidden by it.
    encoded = await hot.read_encoded(ws, Identifier("user_id", "u"), query)
    assert encoded is not None
    message = profile_pb2.Profile.FromString(encoded)
    assert [(r.item_id, r.model_key, r.popular) for r in message.recommendations] == [
        ("pop_a", "a", True),
        ("own", "b", False),
    ]
    await writer.set_popular(ws, "a", [item("new_a", "a")])
    encoded = await hot.read_encoded(ws, Identifier("user_id", "u"), query)
    assert encoded is not None and b"new_a" in encoded and b"pop_a" not in encoded
    await redis.aclose()


async def test_consumed_popular_items_are_left_out_and_refilled_on_the_embedded_store() -> None:
    from services.profile.recommendations.consumed import ConsumedItems
    from services.profile.recommendations.hotwrite import RecommendationWriter

    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    ws = "ws_embedded"
    await redis.set(hotstate.identity_key(ws, "user_id", "u"), "7")
    writer = RecommendationWriter(redis)

    def item(name: str, model: str) -> dict[str, object]:
        return {"item_id": name, "score": 0.5, "model": model, "metadata": '{"n": "é/\\""}'}

    # Objects a and b have popular lists of two items and a reserve; profile 7 has no
    # list of its own and consumed x of a and y, z of b (every item b could serve).
    await writer.set_popular(ws, "a", [item("x", "a"), item("w", "a")], [item("v", "a")])
    await writer.set_popular(ws, "b", [item("y", "b"), item("z", "b")])
    consumed = hotstate.profile_key(ws, 7, "recs_consumed")
    await redis.sadd(consumed, "a:x", "b:y", "b:z", "c:w")
    hot = HotProfiles(redis)
    query = ProfileQuery(frozenset({Section.RECOMMENDATIONS}))
    (profile,) = await hot.read(ws, [Identifier("user_id", "u")], query)
    assert profile is not None and profile.recommendations is not None
    assert [(r.model_key, r.item_id, r.popular) for r in profile.recommendations] == [
        ("a", "w", True),
        ("a", "v", True),
    ]
    assert profile.recommendations[0].metadata == '{"n": "é/\\""}'
    encoded = await hot.read_encoded(ws, Identifier("user_id", "u"), query)
    assert encoded is not None
    message = profile_pb2.Profile.FromString(encoded)
    assert [(r.item_id, r.model_key) for r in message.recommendations] == [("w", "a"), ("v", "a")]

    # A merge moves the merged-away profile's set into the survivor's.
    await ConsumedItems(redis, engine=None, stream_names=["s"]).apply(  # type: ignore[arg-type]
        [
            streams.StreamEntry(
                "1-1",
                {
                    b"kind": b"merge",
                    b"workspace_id": ws.encode(),
                    b"merged_id": b"7",
                    b"survivor_id": b"8",
                },
            )
        ]
    )
    assert not await redis.exists(consumed)
    assert await redis.smembers(hotstate.profile_key(ws, 8, "recs_consumed")) == {
        b"a:x",
        b"b:y",
        b"b:z",
        b"c:w",
    }
    await redis.aclose()


def test_item_ids_are_named_as_training_names_them() -> None:
    from services.profile.recommendations.consumed import item_text

    assert [item_text(v) for v in ("p1", 42, 42.0, 4.5, True, "", None, [1])] == [
        "p1",
        "42",
        "42",
        "4.5",
        "true",
        None,
        None,
        None,
    ]
