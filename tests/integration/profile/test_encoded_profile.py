"""GetProfile's wire bytes, written by the read script, equal the message the object path builds.

GetProfile answers with the Profile message the Lua script serializes itself
(services.profile.hotread); BatchGetProfiles and the HTTP view build theirs from domain
objects. For every kind of profile and query these tests decode the script's bytes with
the generated classes and compare them with the object path's message (and its
serialization, byte for byte), on real Redis through both clients and on the embedded
store `make run` uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import common_pb2, profile_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from services.profile.hotread import HotProfiles
from services.profile.model import ALL_SECTIONS, Identifier, ProfileQuery, Section
from services.profile.server import profile_message
from services.profile.service import ProfileService
from services.profile.store import ProfileStore
from services.shared.errors import NotFound
from services.shared.server import Resources
from tests.helpers.grpc_client import bearer
from tests.integration.profile.seeding import HotSeed, seed_hot, seed_hot_merge

pytestmark = pytest.mark.integration

NOW = 1_735_689_600_000_000
WS = "ws_wire"

FULL = HotSeed(
    profile_id=41,
    identifiers=[
        ("user_id", "u-41"),
        ("email", "zoë@example.com"),
        ("crm_id", "C:0042"),  # a ':' in the value: only the first one separates
        ("device_id", "d" * 200),  # a field longer than 127 bytes: two-byte lengths
    ],
    traits={
        "name": "Zoë 🚀",
        "名前": "ゾーイ",
        "big": 2**61 + 1,
        "neg": -7,
        "ratio": 0.1,
        "none": None,
        "tags": ["a", "ü"],
        "address": {"city": "Lyon", "zip": "69001"},
        "quote": 'say "hi"/\\ \u00e9\n',
        "long": "x" * 20_000,  # three-byte length of the traits field
    },
    computed={"orders_90d": 4, "favourite": "grün"},
    audiences={
        "vip": NOW - 86_400_000_000,
        "odd_micros": NOW - 3_000_001,
        "épique": NOW,
        "epoch": 0,  # entered_at is present but empty
        "before_1970": -1_500_001,  # negative seconds: a ten-byte varint
        "whole_second": 1_000_000,
    },
    predictions={
        "purchase_7d": {
            "probability": 0.8312,
            "percentile": 97.5,
            "scored_at_us": NOW - 60_000_000,
            "top_features": ["orders_90d", "recency", ""],
        },
        "churn_30d": {"probability": 0.0457, "percentile": 12.0, "scored_at_us": NOW},
        "zero": {"probability": 0.0, "percentile": 0, "top_features": []},
        "tiny": {"probability": 5e-324, "percentile": 1e-310, "scored_at_us": 1},
        "huge": {"probability": 1.7976931348623157e308, "percentile": 100},
        "negative": {"probability": -0.25, "percentile": -1e-300},
        "integral": {"probability": 1, "percentile": 50},
    },
    recs=[
        {"item_id": "sku-1", "score": 0.9},
        {"item_id": "sku-2", "score": 0.7, "consumed": True},
        {"item_id": "sku-ü", "score": 0.0},
        {"item_id": "sku-4", "score": 2.5, "consumed": False},
        # As training writes them: the object's key, metadata as JSON text.
        {
            "item_id": "sku-5",
            "score": 0.5,
            "model": "shop",
            "metadata": '{"name":"Tea ü","price":4.5}',
        },
        {"item_id": "sku-6", "score": 0.25, "model": "", "metadata": ""},
    ],
    last_seen_us=NOW - 5_000_000,
    created_at_us=NOW - 10 * 86_400_000_000,
)

EMPTY = HotSeed(profile_id=42, identifiers=[("user_id", "bare")])

NO_RECS_LEFT = HotSeed(
    profile_id=43,
    identifiers=[("anonymous_id", "a-43")],
    recs=[{"item_id": "only", "score": 1.0, "consumed": True}],
    last_seen_us=0,
)

MANY = HotSeed(
    profile_id=44,
    identifiers=[("user_id", f"many-{n}") for n in range(30)],
    traits={f"trait_{n:02d}": n * 1.5 for n in range(40)},
    audiences={f"audience_{n:03d}": NOW - n * 1_000_123 for n in range(150)},
)

SEEDS = [FULL, EMPTY, NO_RECS_LEFT, MANY]

QUERIES = [
    ProfileQuery(),
    *(ProfileQuery(frozenset({section})) for section in Section),
    ProfileQuery(frozenset({Section.TRAITS}), ("name", "名前", "big", "never-set")),
    ProfileQuery(frozenset({Section.TRAITS, Section.AUDIENCES}), ("never-set",)),
    ProfileQuery(ALL_SECTIONS, ("quote", "long", "trait_07")),
    ProfileQuery(frozenset({Section.PREDICTIONS, Section.RECOMMENDATIONS})),
]


@dataclass
class Store:
    """A profile service over one hot-state store, and that store's client for seeding."""

    profiles: ProfileService
    hot: HotProfiles
    redis: Any


@pytest.fixture(params=["pipelined", "redis-py", "embedded"])
async def store(request: pytest.FixtureRequest, resources: Resources) -> AsyncIterator[Store]:
    """The service's hot reads over the pipelined connection, redis-py, or the embedded store."""
    records = ProfileStore(resources.engine)
    if request.param == "embedded":
        embedded = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        hot = HotProfiles(embedded)
        yield Store(ProfileService(hot, records, resources.clock), hot, embedded)
        await embedded.aclose()
        return
    pipelined = resources.pipelined if request.param == "pipelined" else None
    hot = HotProfiles(resources.redis, pipelined)
    yield Store(ProfileService(hot, records, resources.clock), hot, resources.redis)


async def _both_paths(
    store: Store, identifier: Identifier, query: ProfileQuery
) -> tuple[bytes, profile_pb2.Profile]:
    encoded = await store.profiles.get_profile_encoded(WS, identifier, query)
    built = profile_message(await store.profiles.get_profile(WS, identifier, query))
    return encoded, built


def _same_json_objects(decoded: profile_pb2.Profile, built: profile_pb2.Profile) -> None:
    """Require the JSON sections to hold the same objects, then take the decoded text.

    A hash's fields come back in Redis's iteration order, which a rehash can change
    between two reads of an unchanged hash; the cached encoding keeps the order of the
    read that built it. Key order means nothing in a JSON object.
    """
    for name in ("traits", "computed_traits"):
        if getattr(built, name) or getattr(decoded, name):
            assert orjson.loads(getattr(decoded, name)) == orjson.loads(getattr(built, name))
            setattr(built, name, getattr(decoded, name))


async def test_the_scripts_bytes_are_the_object_paths_message(store: Store) -> None:
    for seed in SEEDS:
        await seed_hot(store.redis, WS, seed)
    compared, expected = 0, 0
    for seed in SEEDS:
        expected += len(seed.identifiers[:2]) * len(QUERIES)
        for id_type, id_value in seed.identifiers[:2]:
            for query in QUERIES:
                encoded, built = await _both_paths(store, Identifier(id_type, id_value), query)
                decoded = profile_pb2.Profile.FromString(encoded)
                _same_json_objects(decoded, built)
                assert decoded == built, (seed.profile_id, query)
                # The same bytes, too: fields in number order, defaults left out.
                assert encoded == built.SerializeToString(), (seed.profile_id, query)
                compared += 1
    assert compared == expected


async def test_the_bytes_carry_every_section_as_seeded(store: Store) -> None:
    # Decoded on its own as well, so a fault shared by both paths cannot hide.
    await seed_hot(store.redis, WS, FULL)
    encoded = await store.profiles.get_profile_encoded(
        WS, Identifier("email", "zoë@example.com"), ProfileQuery()
    )
    profile = profile_pb2.Profile.FromString(encoded)
    assert profile.profile_id == "41"
    assert sorted((i.type, i.value) for i in profile.identifiers) == sorted(FULL.identifiers)
    entered = {
        a.key: a.entered_at.seconds * 1_000_000 + a.entered_at.nanos // 1000
        for a in profile.audiences
    }
    assert entered == FULL.audiences
    assert all(a.HasField("entered_at") for a in profile.audiences)
    scores = {p.key: p for p in profile.predictions}
    for key, seeded in FULL.predictions.items():
        assert scores[key].probability == seeded["probability"], key
        assert scores[key].percentile == seeded["percentile"], key
        assert list(scores[key].top_features) == seeded.get("top_features", []), key
        assert scores[key].HasField("scored_at") == ("scored_at_us" in seeded), key
    assert [(r.item_id, r.score, r.model_key) for r in profile.recommendations] == [
        ("sku-1", 0.9, ""),
        ("sku-ü", 0.0, ""),
        ("sku-4", 2.5, ""),
        ("sku-5", 0.5, "shop"),
        ("sku-6", 0.25, ""),
    ]
    assert profile.recommendations[3].metadata == '{"name":"Tea ü","price":4.5}'.encode()
    assert not profile.recommendations[4].metadata
    stamp = profile.last_seen
    assert stamp.seconds * 1_000_000 + stamp.nanos // 1000 == FULL.last_seen_us


async def test_merged_and_unknown_identifiers(store: Store) -> None:
    await seed_hot(store.redis, WS, FULL)
    await seed_hot_merge(store.redis, WS, 7, 6, [])
    await seed_hot_merge(store.redis, WS, 6, FULL.profile_id, [("anonymous_id", "old")])
    encoded, built = await _both_paths(store, Identifier("anonymous_id", "old"), ProfileQuery())
    assert encoded == built.SerializeToString()
    assert profile_pb2.Profile.FromString(encoded).profile_id == "41"
    nobody = Identifier("user_id", "nobody")
    assert await store.hot.read_encoded(WS, nobody, ProfileQuery()) is None
    with pytest.raises(NotFound):
        await store.profiles.get_profile_encoded(WS, nobody, ProfileQuery())


async def test_get_profile_over_grpc_equals_the_batch_answer(  # type: ignore[no-untyped-def]
    profile_stub, workspace, redis_url
) -> None:
    redis = redis_asyncio.Redis.from_url(redis_url)
    await seed_hot(redis, workspace.workspace_id, FULL)
    await redis.aclose()
    sections = profile_pb2.ProfileSection
    for include, paths in [
        ([], []),
        ([sections.PROFILE_SECTION_TRAITS], ["name", "名前", "never-set"]),
        ([sections.PROFILE_SECTION_AUDIENCES, sections.PROFILE_SECTION_PREDICTIONS], []),
        ([sections.PROFILE_SECTION_RECOMMENDATIONS, sections.PROFILE_SECTION_IDENTIFIERS], []),
    ]:
        identifier = common_pb2.Identifier(type="email", value="ZOË@example.com ")
        mask = FieldMask(paths=paths)
        single = await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(identifier=identifier, include=include, trait_mask=mask),
            metadata=bearer(workspace.profile),
        )
        batch = await profile_stub.BatchGetProfiles(
            profile_pb2.BatchGetProfilesRequest(
                identifiers=[identifier], include=include, trait_mask=mask
            ),
            metadata=bearer(workspace.profile),
        )
        assert single == batch.profiles[0].profile
        assert single.profile_id == "41"
    # A caller's trace context takes the OpenTelemetry-wrapped handler: same bytes.
    traced = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=identifier),
        metadata=(
            *bearer(workspace.profile),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ),
    )
    assert traced == await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=identifier), metadata=bearer(workspace.profile)
    )
    assert traced.profile_id == "41" and len(traced.audiences) == len(FULL.audiences)


async def test_the_bytes_equal_the_object_path_with_popular_recommendations(store: Store) -> None:
    from services.profile.recommendations.hotwrite import RecommendationWriter

    for seed in SEEDS:
        await seed_hot(store.redis, WS, seed)
    popular = [{"item_id": "hit", "score": 0.05, "model": "shop", "metadata": '{"name":"Hit"}'}]
    await RecommendationWriter(store.redis).set_popular(WS, "shop", popular)
    for seed in SEEDS:
        identifier = Identifier(*seed.identifiers[0])
        for query in QUERIES:
            encoded, built = await _both_paths(store, identifier, query)
            decoded = profile_pb2.Profile.FromString(encoded)
            _same_json_objects(decoded, built)
            assert decoded == built, (seed.profile_id, query)
            assert encoded == built.SerializeToString(), (seed.profile_id, query)
    # A profile with no list of its own gets the popular one, marked so.
    encoded, _ = await _both_paths(store, Identifier(*EMPTY.identifiers[0]), ProfileQuery())
    items = profile_pb2.Profile.FromString(encoded).recommendations
    assert [(r.item_id, r.model_key, r.popular) for r in items] == [("hit", "shop", True)]
