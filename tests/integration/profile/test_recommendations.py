"""Recommendation objects, their training, and serving what training wrote: real
Postgres and Redis, the profile service on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import common_pb2, profile_pb2

from services.shared import hotstate
from services.shared.errors import field_violations
from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer
from tests.helpers.waiting import eventually
from tests.integration.profile.seeding import HotSeed, seed_db_profile, seed_events, seed_hot

pytestmark = pytest.mark.integration

# A few days before the fixed test clock (2025-01-01).
T0 = 1_735_300_000_000_000
MINUTE = 60_000_000

CATALOGUE = {
    "p1": {"name": "Kettle", "in_stock": True},
    "p2": {"name": "Teapot", "in_stock": True},
    "p3": {"name": "Mug", "in_stock": True},
    "p4": {"name": "Toaster", "in_stock": True},
    "p5": {"name": "Blender", "in_stock": False},
}


@pytest.fixture
async def redis(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def ident(user: str) -> common_pb2.Identifier:
    return common_pb2.Identifier(type="user_id", value=user)


def shop_model(key: str = "shop", **fields: object) -> profile_pb2.RecommendationModel:
    return profile_pb2.RecommendationModel(
        key=key,
        item_events=[
            profile_pb2.ItemEvent(event_name="Product Viewed", weight=1),
            profile_pb2.ItemEvent(event_name="Product Added", weight=3),
            profile_pb2.ItemEvent(event_name="Order Completed", weight=5),
        ],
        item_property="product_id",
        **fields,  # type: ignore[arg-type]
    )


async def person(resources, redis, ws: str, user: str, history: Sequence[tuple[str, str]]) -> int:  # type: ignore[no-untyped-def]
    """A profile in Postgres and the hot state with (event name, product id) events a
    minute apart, in order."""
    pid = await seed_db_profile(resources.engine, ws, [("user_id", user)], T0)
    await seed_hot(redis, ws, HotSeed(pid, [("user_id", user)]))
    if history:
        await seed_events(
            resources.engine,
            ws,
            pid,
            [
                {
                    "message_id": f"{user}-{n}",
                    "type": "track",
                    "name": name,
                    "timestamp_us": T0 + n * MINUTE,
                    "properties": {"product_id": item, **CATALOGUE.get(item, {"name": item})},
                }
                for n, (name, item) in enumerate(history)
            ],
        )
    return pid


async def shop(resources, redis, ws: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Kettle buyers also look at teapots (and mugs); the blender sells alone."""
    viewed, ordered = "Product Viewed", "Order Completed"
    people = {
        "u1": [(viewed, "p1"), (viewed, "p2"), (ordered, "p2")],
        "u2": [(viewed, "p1"), (viewed, "p2"), (viewed, "p3")],
        "u3": [(viewed, "p1"), (viewed, "p3"), (viewed, "p2")],
        "u4": [(viewed, "p2"), (viewed, "p4")],
        "u5": [(ordered, "p5"), (ordered, "p5"), (ordered, "p5")],
        "target": [(viewed, "p1")],
        "cold": [],
    }
    return {user: await person(resources, redis, ws, user, h) for user, h in people.items()}


async def train(stub, admin: str, key: str = "shop") -> profile_pb2.RecommendationModel:  # type: ignore[no-untyped-def]
    started = await stub.TrainRecommendationModel(
        profile_pb2.TrainRecommendationModelRequest(key=key), metadata=bearer(admin)
    )
    assert started.training.state in (
        profile_pb2.TRAINING_STATE_RUNNING,
        profile_pb2.TRAINING_STATE_SUCCEEDED,
    )

    async def finished() -> profile_pb2.RecommendationModel | None:
        found = await stub.GetRecommendationModel(
            profile_pb2.GetRecommendationModelRequest(key=key), metadata=bearer(admin)
        )
        done = (profile_pb2.TRAINING_STATE_SUCCEEDED, profile_pb2.TRAINING_STATE_FAILED)
        return found if found.training.state in done else None

    done = await eventually(finished, 30, f"training of {key}")
    assert done.training.state == profile_pb2.TRAINING_STATE_SUCCEEDED, done.training.error
    return done


async def recommended(stub, key: str, user: str, **options: object) -> list[str]:  # type: ignore[no-untyped-def]
    reply = await stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident(user), **options),
        metadata=bearer(key),
    )
    return [r.item_id for r in reply.recommendations]


async def test_objects_are_created_read_listed_and_deleted(profile_stub, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(workspace.admin)
    created = await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model()), metadata=admin
    )
    assert (created.key, created.size, created.recommend_consumed) == ("shop", 10, False)
    assert [(e.event_name, e.weight) for e in created.item_events] == [
        ("Product Viewed", 1),
        ("Product Added", 3),
        ("Order Completed", 5),
    ]
    assert created.training.state == profile_pb2.TRAINING_STATE_NEVER_TRAINED
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(
            model=shop_model(
                "again",
                size=3,
                recommend_consumed=True,
                exclusions=[profile_pb2.ItemExclusion(property="in_stock", values=["false"])],
            )
        ),
        metadata=admin,
    )
    listed = await profile_stub.ListRecommendationModels(
        profile_pb2.ListRecommendationModelsRequest(), metadata=admin
    )
    assert [(m.key, m.size) for m in listed.models] == [("again", 3), ("shop", 10)]
    assert list(listed.models[0].exclusions[0].values) == ["false"]

    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=shop_model()), metadata=admin
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS

    await profile_stub.DeleteRecommendationModel(
        profile_pb2.DeleteRecommendationModelRequest(key="again"), metadata=admin
    )
    for call, request in [
        (
            profile_stub.GetRecommendationModel,
            profile_pb2.GetRecommendationModelRequest(key="again"),
        ),
        (
            profile_stub.DeleteRecommendationModel,
            profile_pb2.DeleteRecommendationModelRequest(key="again"),
        ),
        (
            profile_stub.TrainRecommendationModel,
            profile_pb2.TrainRecommendationModelRequest(key="again"),
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await call(request, metadata=admin)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # Configuration is not a profile read: the profile:read key may not touch it.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await profile_stub.ListRecommendationModels(
            profile_pb2.ListRecommendationModelsRequest(), metadata=bearer(workspace.profile)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_bad_object_names_every_bad_field_and_creates_nothing(
    profile_stub, workspace
) -> None:  # type: ignore[no-untyped-def]
    admin = bearer(workspace.admin)
    bad = profile_pb2.RecommendationModel(
        key="Shop!",
        item_events=[
            profile_pb2.ItemEvent(event_name="", weight=1),
            profile_pb2.ItemEvent(event_name="Viewed", weight=-2),
            profile_pb2.ItemEvent(event_name="Viewed", weight=float("nan")),
        ],
        item_property="",
        size=101,
        exclusions=[profile_pb2.ItemExclusion(property="in_stock")],
        goal_event="Order Completed",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=bad), metadata=admin
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in field_violations(refused.value)} == {
        "model.key",
        "model.item_events[0].event_name",
        "model.item_events[1].weight",
        "model.item_events[2].event_name",
        "model.item_events[2].weight",
        "model.item_property",
        "model.size",
        "model.exclusions[0].values",
        "model.goal_event",
    }
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(
                model=profile_pb2.RecommendationModel(key="x", item_property="sku")
            ),
            metadata=admin,
        )
    assert [v.field for v in field_violations(empty.value)] == ["model.item_events"]
    listed = await profile_stub.ListRecommendationModels(
        profile_pb2.ListRecommendationModelsRequest(), metadata=admin
    )
    assert not listed.models


async def test_training_serves_related_unconsumed_items_and_popular_ones_to_cold_profiles(
    profile_stub, resources, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    admin = bearer(workspace.admin)
    other = await make_workspace(resources, "other")
    # Another workspace whose items must never appear in this one's recommendations.
    await shop(resources, redis, ws)
    for n in range(3):
        await person(
            resources,
            redis,
            other.workspace_id,
            f"o{n}",
            [("Product Viewed", "q1"), ("Product Viewed", "q2"), ("Product Viewed", "p9")],
        )
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model(size=3)), metadata=admin
    )
    done = await train(profile_stub, workspace.admin)
    assert (done.training.items, done.training.interactions) == (5, 15)
    assert done.training.profiles == 7 and done.training.progress == 1.0

    # Kettle viewers went on to teapots and mugs: those come first, the kettle never.
    target = await recommended(profile_stub, workspace.profile, "target")
    assert target[:2] == ["p2", "p3"] and "p1" not in target and len(target) == 3
    # Nothing a profile had is recommended back to it.
    consumed = {"u1": {"p1", "p2"}, "u2": {"p1", "p2", "p3"}, "u3": {"p1", "p2", "p3"},
                "u4": {"p2", "p4"}, "u5": {"p5"}}  # fmt: skip
    for user, had in consumed.items():
        got = await recommended(profile_stub, workspace.profile, user)
        assert got and not had & set(got), user
    # A profile without item events gets the most popular items (weighted: p5 was
    # ordered three times, p2 viewed four times and ordered once).
    cold = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("cold")),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in cold.recommendations] == ["p5", "p2", "p1"]
    assert not cold.cold_start
    # Workspace isolation: none of this workspace's items name the other's.
    keys = [k async for k in redis.scan_iter(match=f"hs:{{{ws}}}:p:*:recs")]
    served = {item["item_id"] for k in keys for item in orjson.loads(await redis.get(k))}
    assert served <= set(CATALOGUE)

    # GetProfile shows them, with the item's latest properties and the object's key.
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("target")),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in profile.recommendations] == target
    first = profile.recommendations[0]
    assert orjson.loads(first.metadata) == {"name": "Teapot", "in_stock": True}
    assert first.model_key == "shop" and first.score > 0


async def test_training_is_deterministic_and_keeps_other_objects_items(
    profile_stub, resources, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    admin = bearer(workspace.admin)
    pids = await shop(resources, redis, ws)
    for model in (shop_model(), shop_model("instock", exclusions=[
        profile_pb2.ItemExclusion(property="in_stock", values=["false"])
    ])):  # fmt: skip
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=model), metadata=admin
        )
    await train(profile_stub, workspace.admin, "shop")
    await train(profile_stub, workspace.admin, "instock")

    async def snapshot() -> dict[int, bytes]:
        return {
            pid: await redis.get(hotstate.profile_key(ws, pid, "recs")) for pid in pids.values()
        }

    first = await snapshot()
    await train(profile_stub, workspace.admin, "shop")
    await train(profile_stub, workspace.admin, "instock")
    assert await snapshot() == first

    # Each object is asked for by key; the exclusion keeps the blender out of one only.
    cold_shop = await recommended(profile_stub, workspace.profile, "cold", model_key="shop")
    cold_instock = await recommended(profile_stub, workspace.profile, "cold", model_key="instock")
    assert "p5" in cold_shop and "p5" not in cold_instock
    # Deleting an object takes its items out of every profile and leaves the other's.
    await profile_stub.DeleteRecommendationModel(
        profile_pb2.DeleteRecommendationModelRequest(key="shop"), metadata=admin
    )
    everything = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("cold"), limit=100),
        metadata=bearer(workspace.profile),
    )
    assert {r.model_key for r in everything.recommendations} == {"instock"}


async def test_consumed_items_only_when_the_object_allows_them(
    profile_stub, resources, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    await shop(resources, redis, workspace.workspace_id)
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(
            model=shop_model(recommend_consumed=True, size=5)
        ),
        metadata=bearer(workspace.admin),
    )
    await train(profile_stub, workspace.admin)
    # u5 keeps ordering the blender: with repeats allowed it is recommended again.
    assert "p5" in await recommended(profile_stub, workspace.profile, "u5")


async def test_a_deleted_profile_leaves_the_inputs_of_the_next_training(
    profile_stub, resources, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    await shop(resources, redis, workspace.workspace_id)
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model()),
        metadata=bearer(workspace.admin),
    )
    await train(profile_stub, workspace.admin)
    assert "p5" in await recommended(profile_stub, workspace.profile, "cold")
    # The only blender buyer is erased: the blender is nobody's interaction any more.
    await profile_stub.DeleteProfile(
        profile_pb2.DeleteProfileRequest(identifier=ident("u5")), metadata=bearer(workspace.admin)
    )
    done = await train(profile_stub, workspace.admin)
    assert (done.training.items, done.training.profiles) == (4, 6)
    assert "p5" not in await recommended(profile_stub, workspace.profile, "cold")


async def test_scheduled_retraining_runs_on_one_replica_and_waits_for_its_turn(
    profile_stub, resources, workspace, redis, clock
) -> None:  # type: ignore[no-untyped-def]
    from services.profile.app import build_models
    from services.profile.recommendations.definition import TrainingState
    from services.profile.recommendations.scheduler import RetrainScheduler
    from services.profile.recommendations.store import RecommendationStore

    pids = await shop(resources, redis, workspace.workspace_id)
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model()),
        metadata=bearer(workspace.admin),
    )
    store = RecommendationStore(resources.engine)
    # Two replicas, each with its own objects facade and trainer, on one database.
    replicas = [
        RetrainScheduler(build_models(resources), store, clock, every_seconds=3600)
        for _ in range(2)
    ]
    rounds = await asyncio.gather(*(replica.run_due() for replica in replicas))
    jobs = [job for found in rounds for job in found]
    # Never trained, so due; exactly one replica ran it (the other found it running).
    assert [(job.key, job.state) for job in jobs] == [("shop", TrainingState.SUCCEEDED)]
    status = (await store.get(workspace.workspace_id, "shop")).training
    assert status.state is TrainingState.SUCCEEDED and status.progress == 1.0
    assert await redis.get(hotstate.profile_key(workspace.workspace_id, pids["target"], "recs"))
    # Not due again until the interval has passed since that training.
    assert await replicas[0].run_due() == [] and await replicas[1].run_due() == []
    clock.advance(3600)
    again = await replicas[1].run_due()
    assert [(job.key, job.state) for job in again] == [("shop", TrainingState.SUCCEEDED)]


async def test_the_ranker_serves_unconsumed_items_deterministically_within_the_workspace(
    profile_stub, resources, workspace, redis, clock, caplog
) -> None:  # type: ignore[no-untyped-def]
    import logging
    import random

    from services.profile.recommendations.hotwrite import RecommendationWriter
    from services.profile.recommendations.ranker import RankerSettings
    from services.profile.recommendations.service import RecommendationModels
    from services.profile.recommendations.store import RecommendationStore
    from services.profile.recommendations.training import Trainer

    ws = workspace.workspace_id
    other = await make_workspace(resources, "other")
    rng = random.Random(5)
    # Two tastes of six items each; people browse within theirs, a few steps apart.
    histories: dict[str, list[tuple[str, str]]] = {}
    for n in range(40):
        taste = (
            ["p1", "p2", "p3", "p4", "p5", "p6"] if n % 2 else ["k1", "k2", "k3", "k4", "k5", "k6"]
        )
        histories[f"u{n}"] = [("Product Viewed", rng.choice(taste)) for _ in range(6)]
    pids = {user: await person(resources, redis, ws, user, h) for user, h in histories.items()}
    # The other workspace's shoppers use the same product ids and some of their own.
    for n in range(5):
        await person(resources, redis, other.workspace_id, f"o{n}",
                     [("Product Viewed", "p1"), ("Product Viewed", "zz-other")])  # fmt: skip
    await profile_stub.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=shop_model(size=4)),
        metadata=bearer(workspace.admin),
    )
    store = RecommendationStore(resources.engine)
    writer = RecommendationWriter(resources.redis)
    # Small knobs, so 40 profiles are enough to teach it.
    knobs = RankerSettings(targets=2, rounds=20, min_groups=10)
    models = RecommendationModels(store, writer, Trainer(store, writer, clock, knobs=knobs), clock)

    async def snapshot() -> dict[int, bytes]:
        return {
            pid: await redis.get(hotstate.profile_key(ws, pid, "recs")) for pid in pids.values()
        }

    with caplog.at_level(logging.INFO, logger="services.profile.recommendations.training"):
        await models.train_now(ws, "shop")
    assert any(getattr(r, "ranked", False) for r in caplog.records)
    first = await snapshot()
    await models.train_now(ws, "shop")
    assert await snapshot() == first  # same events and clock: the same bytes
    for user, history in histories.items():
        got = await recommended(profile_stub, workspace.profile, user)
        had = {item for _, item in history}
        assert got and not had & set(got), user
        assert "zz-other" not in got


async def test_profiles_newer_than_the_training_get_the_popular_list_and_a_rebuild_restores_it(
    profile_stub, resources, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    from services.profile.app import SPEC as PROFILE
    from services.shared.rebuild import rebuild_hot_state

    ws = workspace.workspace_id
    await shop(resources, redis, ws)
    for model in (shop_model(size=3), shop_model("instock", size=2, exclusions=[
        profile_pb2.ItemExclusion(property="in_stock", values=["false"])
    ])):  # fmt: skip
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=model),
            metadata=bearer(workspace.admin),
        )
    await train(profile_stub, workspace.admin, "shop")
    trained_target = await recommended(profile_stub, workspace.profile, "target")
    # What a cold profile got at training is the workspace's popular list.
    cold_at_training = await recommended(profile_stub, workspace.profile, "cold", model_key="shop")
    assert cold_at_training == ["p5", "p2", "p1"]

    # A profile that arrives after the training: no list of its own, the popular one.
    await person(resources, redis, ws, "newcomer", [("Product Viewed", "p3")])
    reply = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("newcomer")),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in reply.recommendations] == cold_at_training
    assert reply.cold_start and {r.model_key for r in reply.recommendations} == {"shop"}
    assert orjson.loads(reply.recommendations[1].metadata) == {"name": "Teapot", "in_stock": True}
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("newcomer")),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in profile.recommendations] == cold_at_training
    assert all(r.popular for r in [*profile.recommendations, *reply.recommendations])
    # A trained profile keeps its own list, not marked cold.
    own = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("target")),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in own.recommendations] == trained_target and not own.cold_start
    assert not any(r.popular for r in own.recommendations)
    assert trained_target != cold_at_training

    # Training a second object: trained profiles get its own list; the newcomer (not in
    # the database at that training: only in the hot state) its popular list beside
    # the first's, and its cached GetProfile encoding is not served again.
    await redis.delete(hotstate.identity_key(ws, "user_id", "newcomer"))
    await seed_hot(redis, ws, HotSeed(999_999, [("user_id", "latecomer")]))
    before = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("latecomer")),
        metadata=bearer(workspace.profile),
    )
    assert {r.model_key for r in before.recommendations} == {"shop"}
    await train(profile_stub, workspace.admin, "instock")
    after = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("latecomer")),
        metadata=bearer(workspace.profile),
    )
    assert [(r.model_key, r.item_id, r.popular) for r in after.recommendations] == [
        ("instock", "p2", True),
        ("instock", "p1", True),
        ("shop", "p5", True),
        ("shop", "p2", True),
        ("shop", "p1", True),
    ]
    only = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("target"), model_key="instock"),
        metadata=bearer(workspace.profile),
    )
    assert only.recommendations and not only.cold_start

    # The hot state is lost and rebuilt from the database: the popular lists are back
    # (and the profiles' own lists: test_a_rebuild_restores_each_profiles_own_list).
    popular_key = hotstate.popular_recommendations_key(ws)
    kept = await redis.hgetall(popular_key)
    await redis.flushdb()
    await seed_hot(redis, ws, HotSeed(999_999, [("user_id", "latecomer")]))
    said: list[str] = []
    assert await rebuild_hot_state([PROFILE], resources, said.append, [ws]) == 1
    assert any(line.endswith(", 2 popular recommendation lists") for line in said)
    rebuilt = await redis.hgetall(popular_key)
    version = hotstate.POPULAR_VERSION_FIELD.encode()
    assert {k: v for k, v in rebuilt.items() if k != version} == {
        k: v for k, v in kept.items() if k != version
    }
    again = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("latecomer"), model_key="shop"),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in again.recommendations] == cold_at_training and again.cold_start

    # Deleting an object takes its popular list away too.
    await profile_stub.DeleteRecommendationModel(
        profile_pb2.DeleteRecommendationModelRequest(key="shop"), metadata=bearer(workspace.admin)
    )
    left = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("latecomer")),
        metadata=bearer(workspace.profile),
    )
    assert {r.model_key for r in left.recommendations} == {"instock"}


async def test_a_goal_event_makes_the_ranker_recommend_what_is_ordered_next(
    profile_stub, resources, workspace, redis, clock
) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from services.profile.recommendations.hotwrite import RecommendationWriter
    from services.profile.recommendations.ranker import RankerSettings
    from services.profile.recommendations.service import RecommendationModels
    from services.profile.recommendations.store import RecommendationStore
    from services.profile.recommendations.training import Trainer

    ws = workspace.workspace_id
    admin = bearer(workspace.admin)
    # 30 pages viewed along a chain, 4 products ordered among the views; everyone's last
    # interactions are views. Someone who viewed pages 2 and 3 will view page 4 next,
    # but what they will order next is a product.
    rng = np.random.default_rng(1)
    viewed, ordered = "Product Viewed", "Order Completed"
    for n in range(100):
        start = int(rng.integers(0, 30))
        products = [f"o{int(i)}" for i in rng.permutation(4)[:2]]
        pages = [f"v{(start + step) % 30}" for step in range(5)]
        await person(resources, redis, ws, f"u{n}", [
            (viewed, pages[0]), (viewed, pages[1]), (ordered, products[0]), (viewed, pages[2]),
            (ordered, products[1]), (viewed, pages[3]), (viewed, pages[4]),
        ])  # fmt: skip
    await person(resources, redis, ws, "browser", [(viewed, "v2"), (viewed, "v3")])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(
                model=shop_model("bad", goal_event="Product Returned")
            ),
            metadata=admin,
        )
    assert [v.field for v in field_violations(refused.value)] == ["model.goal_event"]
    for model in (shop_model("next", size=3), shop_model("orders", size=3, goal_event=ordered)):
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=model), metadata=admin
        )
    found = await profile_stub.GetRecommendationModel(
        profile_pb2.GetRecommendationModelRequest(key="orders"), metadata=admin
    )
    assert found.goal_event == ordered
    store = RecommendationStore(resources.engine)
    writer = RecommendationWriter(resources.redis)
    # Small knobs, so 100 profiles are enough to teach it.
    knobs = RankerSettings(targets=2, rounds=50, min_groups=10)
    models = RecommendationModels(store, writer, Trainer(store, writer, clock, knobs=knobs), clock)
    for key in ("next", "orders"):
        await models.train_now(ws, key)
    following = await recommended(profile_stub, workspace.profile, "browser", model_key="next")
    to_order = await recommended(profile_stub, workspace.profile, "browser", model_key="orders")
    assert following[0] == "v4"
    assert to_order[0].startswith("o")


async def lists_in_database(resources, ws: str) -> dict[tuple[str, int], list[str]]:  # type: ignore[no-untyped-def]
    """(object key, profile id) -> item ids, as the recommendation_lists read model holds them."""
    from sqlalchemy import select

    from services.shared.db.tables import recommendation_lists as lists

    async with resources.engine.connect() as connection:
        rows = await connection.execute(
            select(lists.c.model_key, lists.c.profile_id, lists.c["items"]).where(
                lists.c.workspace_id == ws
            )
        )
        return {(k, pid): [i["item_id"] for i in orjson.loads(items)] for k, pid, items in rows}


async def test_a_rebuild_restores_each_profiles_own_list_and_erasure_removes_it(
    profile_stub, resources, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    from services.profile.app import SPEC as PROFILE
    from services.shared.rebuild import rebuild_hot_state

    ws = workspace.workspace_id
    pids = await shop(resources, redis, ws)
    for key in ("shop", "other"):
        await profile_stub.CreateRecommendationModel(
            profile_pb2.CreateRecommendationModelRequest(model=shop_model(key, size=3)),
            metadata=bearer(workspace.admin),
        )
        await train(profile_stub, workspace.admin, key)
    own = {u: await recommended(profile_stub, workspace.profile, u) for u in pids}
    shop_list = await recommended(profile_stub, workspace.profile, "target", model_key="shop")
    popular = await recommended(profile_stub, workspace.profile, "cold", model_key="shop")
    assert shop_list != popular
    # The training wrote every profile's list to the database too.
    stored = await lists_in_database(resources, ws)
    assert stored[("shop", pids["target"])] == shop_list
    assert {pid for _, pid in stored} == set(pids.values())

    # The hot state is lost (and holds a list of an object the database does not know);
    # the rebuild brings each profile's own lists back, not the popular ones.
    await redis.flushdb()
    for user, pid in pids.items():
        await seed_hot(redis, ws, HotSeed(pid, [("user_id", user)]))
    await redis.hset(hotstate.profile_key(ws, pids["u1"], "recs_by_model"), "gone", "{}")
    said: list[str] = []
    await rebuild_hot_state([PROFILE], resources, said.append, [ws])
    assert (
        f"  {ws} profile: 14 profile recommendation lists, 2 popular recommendation lists" in said
    )
    for user in pids:
        assert await recommended(profile_stub, workspace.profile, user) == own[user]
    reply = await profile_stub.GetRecommendations(
        profile_pb2.GetRecommendationsRequest(identifier=ident("target")),
        metadata=bearer(workspace.profile),
    )
    assert not reply.cold_start and not any(r.popular for r in reply.recommendations)
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("target")),
        metadata=bearer(workspace.profile),
    )
    assert [r.item_id for r in profile.recommendations if r.model_key == "shop"] == shop_list
    assert set(await redis.hkeys(hotstate.profile_key(ws, pids["u1"], "recs_by_model"))) == {
        b"other",
        b"shop",
    }

    # Erasing a person removes their rows; deleting an object removes its rows.
    await profile_stub.DeleteProfile(
        profile_pb2.DeleteProfileRequest(identifier=ident("target")),
        metadata=bearer(workspace.admin),
    )
    stored = await lists_in_database(resources, ws)
    assert all(pid != pids["target"] for _, pid in stored) and len(stored) == 12
    await profile_stub.DeleteRecommendationModel(
        profile_pb2.DeleteRecommendationModelRequest(key="other"), metadata=bearer(workspace.admin)
    )
    assert {key for key, _ in await lists_in_database(resources, ws)} == {"shop"}


async def test_a_popular_item_the_profile_consumed_after_training_is_not_served(
    resources, workspace, redis, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from audiences.v1 import ingest_pb2, ingest_pb2_grpc, profile_pb2_grpc

    from tests.helpers.servers import in_process

    monkeypatch.setenv("PROFILE_HTTP_PORT", "0")
    monkeypatch.setenv("INGEST_HTTP_PORT", "0")
    monkeypatch.setenv("RECOMMENDATIONS_SCHEDULE_SECONDS", "0")
    ws = workspace.workspace_id
    pids = await shop(resources, redis, ws)
    async with (
        in_process(resources, ["ingest", "profile"]) as at,
        grpc.aio.insecure_channel(at["ingest"]) as ingest_channel,
        grpc.aio.insecure_channel(at["profile"]) as profile_channel,
    ):
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        stub = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        for model in (shop_model(size=3), shop_model("again", size=3, recommend_consumed=True)):
            await stub.CreateRecommendationModel(
                profile_pb2.CreateRecommendationModelRequest(model=model),
                metadata=bearer(workspace.admin),
            )
            await train(stub, workspace.admin, model.key)
        popular = await recommended(stub, workspace.profile, "cold", model_key="shop")
        assert popular == ["p5", "p2", "p1"]

        async def send(message_id: str, user: str = "newcomer", **fields: object) -> None:
            sent = await ingest.Batch(
                ingest_pb2.BatchRequest(
                    events=[
                        ingest_pb2.Event(message_id=message_id, user_id=user, **fields)  # type: ignore[arg-type]
                    ]
                ),
                metadata=bearer(workspace.ingest),
            )
            assert sent.accepted == 1, sent

        async def read(user: str) -> profile_pb2.Profile:
            return await stub.GetProfile(
                profile_pb2.GetProfileRequest(identifier=ident(user)),
                metadata=bearer(workspace.profile),
            )

        async def items(profile: profile_pb2.Profile, key: str) -> list[str]:
            return [r.item_id for r in profile.recommendations if r.model_key == key]

        # A profile created after the training is served the popular lists (and its
        # GetProfile encoding is cached with them)...
        await send("newcomer-1", type=ingest_pb2.EVENT_TYPE_IDENTIFY)

        async def known() -> profile_pb2.Profile | None:
            try:
                return await read("newcomer")
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return None

        before = await eventually(known, 20, "the newcomer's profile")
        assert await items(before, "shop") == popular == await items(before, "again")

        # ...until it views the teapot: the object that does not recommend consumed
        # items leaves it out and refills the list from the popular items that follow.
        await send(
            "target-1",
            user="target",
            type=ingest_pb2.EVENT_TYPE_TRACK,
            event="Product Viewed",
            properties=orjson.dumps({"product_id": "p4", "name": "Toaster"}),
        )
        await send(
            "newcomer-2",
            type=ingest_pb2.EVENT_TYPE_TRACK,
            event="Product Viewed",
            properties=orjson.dumps({"product_id": "p2", "name": "Teapot"}),
        )

        async def without_teapot() -> list[str] | None:
            got = await recommended(stub, workspace.profile, "newcomer", model_key="shop")
            return got if "p2" not in got else None

        assert await eventually(without_teapot, 20, "the teapot left out") == ["p5", "p1", "p3"]
        reply = await stub.GetRecommendations(
            profile_pb2.GetRecommendationsRequest(identifier=ident("newcomer"), model_key="shop"),
            metadata=bearer(workspace.profile),
        )
        assert reply.cold_start and all(r.popular for r in reply.recommendations)
        assert orjson.loads(reply.recommendations[2].metadata) == {"name": "Mug", "in_stock": True}
        after = await read("newcomer")
        assert await items(after, "shop") == ["p5", "p1", "p3"]
        # The object that recommends consumed items still serves it.
        assert await items(after, "again") == popular
        assert await recommended(stub, workspace.profile, "newcomer", model_key="again") == popular
        # A profile with a list of its own is not tracked (its next training covers it):
        # its event went into the stream before the newcomer's, so it was handled.
        assert not await redis.exists(hotstate.profile_key(ws, pids["target"], "recs_consumed"))
