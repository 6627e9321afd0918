"""ListEvents reads the timeline from Postgres; DeleteProfile erases and suppresses."""

from __future__ import annotations

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import common_pb2, profile_pb2
from sqlalchemy import func, select

from services.shared import hotstate
from services.shared.db.tables import events, identities, profile_traits, profiles, suppressions
from services.shared.errors import field_violations
from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer
from tests.integration.profile.seeding import HotSeed, seed_db_profile, seed_events, seed_hot

pytestmark = pytest.mark.integration

T0 = 1_735_000_000_000_000


def ident(id_type: str, value: str) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=id_type, value=value)


@pytest.fixture
async def redis(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def track(message_id: str, name: str, at_us: int, **properties: object) -> dict[str, object]:
    return {
        "message_id": message_id,
        "type": "track",
        "name": name,
        "timestamp_us": at_us,
        "properties": properties,
        "context": {"ip": "10.0.0.1"},
    }


@pytest.fixture
async def history(resources, workspace):  # type: ignore[no-untyped-def]
    """Ada (survivor) with an older merged anonymous profile, and Bob, each with events."""
    engine = resources.engine
    ws = workspace.workspace_id
    ada = await seed_db_profile(
        engine, ws, [("user_id", "u-ada"), ("email", "ada@example.com")], T0, traits={"plan": "pro"}
    )
    anon = await seed_db_profile(engine, ws, [("anonymous_id", "anon-1")], T0, canonical_id=ada)
    bob = await seed_db_profile(engine, ws, [("user_id", "u-bob")], T0)
    await seed_events(
        engine,
        ws,
        ada,
        [
            track(f"a{n}", "Viewed" if n % 2 else "Ordered", T0 + n * 1_000_000, n=n)
            for n in range(7)
        ]
        # Two events at the same instant: seq breaks the tie, pages must not lose one.
        + [
            track("tie-1", "Viewed", T0 + 3_000_000, n=31),
            track("tie-2", "Viewed", T0 + 3_000_000, n=32),
        ],
    )
    await seed_events(engine, ws, anon, [track("anon-0", "Viewed", T0 + 500_000, n=-1)])
    await seed_events(engine, ws, bob, [track("b0", "Viewed", T0 + 2_000_000, n=100)])
    return {"ada": ada, "anon": anon, "bob": bob}


async def all_pages(stub, key, identifier, page_size, names=()):  # type: ignore[no-untyped-def]
    found, token, pages = [], "", 0
    while True:
        reply = await stub.ListEvents(
            profile_pb2.ListEventsRequest(
                identifier=identifier, page_size=page_size, page_token=token, event_names=names
            ),
            metadata=bearer(key),
        )
        found.extend(reply.events)
        pages += 1
        token = reply.next_page_token
        if not token:
            return found, pages


async def test_timeline_is_newest_first_paged_and_includes_merged_history(  # type: ignore[no-untyped-def]
    profile_stub, workspace, history
) -> None:
    everything, pages = await all_pages(
        profile_stub, workspace.profile, ident("user_id", "u-ada"), 1000
    )
    assert pages == 1
    ordered = sorted(everything, key=lambda e: (e.timestamp.ToMicroseconds(), e.seq), reverse=True)
    assert [e.seq for e in everything] == [e.seq for e in ordered]
    # Ada's own nine events and the merged anonymous one; never Bob's.
    assert sorted(e.message_id for e in everything) == sorted(
        [f"a{n}" for n in range(7)] + ["tie-1", "tie-2", "anon-0"]
    )
    first = everything[0]
    assert first.message_id == "a6" and first.type == "track" and first.name == "Ordered"
    assert orjson.loads(first.properties) == {"n": 6}
    assert orjson.loads(first.context) == {"ip": "10.0.0.1"}
    # The same timeline by the merged profile's identifier, in pages of 3.
    paged, pages = await all_pages(
        profile_stub, workspace.profile, ident("anonymous_id", "anon-1"), 3
    )
    assert [e.seq for e in paged] == [e.seq for e in everything]
    assert pages == 4


async def test_timeline_filters_by_event_name(profile_stub, workspace, history) -> None:  # type: ignore[no-untyped-def]
    ordered, _ = await all_pages(
        profile_stub, workspace.profile, ident("email", "ada@example.com"), 2, ["Ordered"]
    )
    assert [e.message_id for e in ordered] == ["a6", "a4", "a2", "a0"]


async def test_timeline_errors(profile_stub, resources, workspace, history) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (
            profile_pb2.ListEventsRequest(identifier=ident("user_id", "u-ada"), page_size=1001),
            "page_size",
        ),
        (
            profile_pb2.ListEventsRequest(identifier=ident("user_id", "u-ada"), page_size=-1),
            "page_size",
        ),
        (
            profile_pb2.ListEventsRequest(identifier=ident("user_id", "u-ada"), page_token="%%%"),
            "page_token",
        ),
        (profile_pb2.ListEventsRequest(identifier=ident("user_id", "")), "identifier.value"),
        (
            profile_pb2.ListEventsRequest(
                identifier=ident("user_id", "u-ada"), event_names=["ok", ""]
            ),
            "event_names[1]",
        ),
    ]
    for request, bad_field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await profile_stub.ListEvents(request, metadata=bearer(workspace.profile))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(error.value)] == [bad_field]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.ListEvents(
            profile_pb2.ListEventsRequest(identifier=ident("user_id", "nobody")),
            metadata=bearer(workspace.profile),
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    other = await make_workspace(resources, "globex")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.ListEvents(
            profile_pb2.ListEventsRequest(identifier=ident("user_id", "u-ada")),
            metadata=bearer(other.profile),
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def count(engine, table, *where) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as connection:
        return int(
            (
                await connection.execute(select(func.count()).select_from(table).where(*where))
            ).scalar_one()
        )


async def test_delete_profile_erases_everything_and_suppresses_identifiers(  # type: ignore[no-untyped-def]
    profile_stub, resources, workspace, history, redis, clock
) -> None:
    ws = workspace.workspace_id
    engine = resources.engine
    ada_ids = [("user_id", "u-ada"), ("email", "ada@example.com")]
    await seed_hot(
        redis, ws, HotSeed(history["ada"], ada_ids, traits={"plan": "pro"}, audiences={"vip": T0})
    )
    await seed_hot(redis, ws, HotSeed(history["anon"], [("anonymous_id", "anon-1")]))
    await redis.set(hotstate.merged_key(ws, history["anon"]), str(history["ada"]))
    await seed_hot(
        redis, ws, HotSeed(history["bob"], [("user_id", "u-bob")], traits={"plan": "free"})
    )
    bob_keys_before = sorted(await redis.keys(f"hs:{{{ws}}}:p:{history['bob']}:*"))
    clock.set(T0 + 3_600_000_000)

    reply = await profile_stub.DeleteProfile(
        profile_pb2.DeleteProfileRequest(identifier=ident("email", "ada@example.com")),
        metadata=bearer(workspace.admin),
    )
    assert reply.events_deleted == 10
    assert reply.identities_deleted == 3
    assert reply.audiences_exited == 0  # no membership tables yet

    members = [history["ada"], history["anon"]]
    assert await count(engine, events, events.c.profile_id.in_(members)) == 0
    assert await count(engine, identities, identities.c.profile_id.in_(members)) == 0
    assert await count(engine, profile_traits, profile_traits.c.profile_id.in_(members)) == 0
    async with engine.connect() as connection:
        deleted_at = dict(
            (
                await connection.execute(select(profiles.c.profile_id, profiles.c.deleted_at_us))
            ).all()
        )
        suppressed = (
            await connection.execute(
                select(
                    suppressions.c.id_type,
                    suppressions.c.id_value,
                    suppressions.c.created_at_us,
                    suppressions.c.active,
                ).where(suppressions.c.workspace_id == ws)
            )
        ).all()
    assert deleted_at == {
        history["ada"]: clock.now_us(),
        history["anon"]: clock.now_us(),
        history["bob"]: None,
    }
    assert sorted((t, v) for t, v, _, _ in suppressed) == sorted(
        [*ada_ids, ("anonymous_id", "anon-1")]
    )
    assert {(at, active) for _, _, at, active in suppressed} == {(clock.now_us(), True)}

    # Hot state: Ada's and the merged profile's keys are gone, Bob's untouched.
    remaining = sorted(await redis.keys(f"hs:{{{ws}}}:*"))
    assert remaining == sorted(
        [*bob_keys_before, hotstate.identity_key(ws, "user_id", "u-bob").encode()]
    )
    # Bob keeps his events and identity.
    assert await count(engine, events, events.c.profile_id == history["bob"]) == 1
    for identifier in (ident("email", "ada@example.com"), ident("anonymous_id", "anon-1")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await profile_stub.GetProfile(
                profile_pb2.GetProfileRequest(identifier=identifier),
                metadata=bearer(workspace.profile),
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.DeleteProfile(
            profile_pb2.DeleteProfileRequest(identifier=ident("user_id", "u-ada")),
            metadata=bearer(workspace.admin),
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_profile_needs_admin_and_a_valid_identifier_and_changes_nothing_otherwise(  # type: ignore[no-untyped-def]
    profile_stub, resources, workspace, history, redis
) -> None:
    ws = workspace.workspace_id
    await seed_hot(
        redis, ws, HotSeed(history["ada"], [("user_id", "u-ada")], traits={"plan": "pro"})
    )
    hot_before = sorted(await redis.keys(f"hs:{{{ws}}}:*"))
    other = await make_workspace(resources, "globex")
    attempts = [
        (workspace.profile, ident("user_id", "u-ada"), grpc.StatusCode.PERMISSION_DENIED),
        (workspace.admin, ident("user_id", ""), grpc.StatusCode.INVALID_ARGUMENT),
        (workspace.admin, ident("User", "u-ada"), grpc.StatusCode.INVALID_ARGUMENT),
        (other.admin, ident("user_id", "u-ada"), grpc.StatusCode.NOT_FOUND),
    ]
    for key, identifier, code in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await profile_stub.DeleteProfile(
                profile_pb2.DeleteProfileRequest(identifier=identifier), metadata=bearer(key)
            )
        assert error.value.code() == code
    assert await count(resources.engine, events) == 11
    assert await count(resources.engine, identities) == 4
    assert await count(resources.engine, suppressions) == 0
    assert await count(resources.engine, profiles, profiles.c.deleted_at_us.is_not(None)) == 0
    assert sorted(await redis.keys(f"hs:{{{ws}}}:*")) == hot_before


async def test_delete_finishes_a_hot_state_left_behind(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    # Postgres no longer knows the identifier (an earlier erasure committed) but the
    # hot state still resolves it: a retry erases what is left.
    ws = workspace.workspace_id
    await seed_hot(
        redis, ws, HotSeed(41, [("user_id", "ghost"), ("email", "g@example.com")], traits={"a": 1})
    )
    reply = await profile_stub.DeleteProfile(
        profile_pb2.DeleteProfileRequest(identifier=ident("user_id", "ghost")),
        metadata=bearer(workspace.admin),
    )
    assert (reply.events_deleted, reply.identities_deleted) == (0, 0)
    assert await redis.keys(f"hs:{{{ws}}}:*") == []


async def test_recommendations_best_first_limited_and_cold_start(
    profile_stub, workspace, redis
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    recs = [
        {"item_id": "b", "score": 0.4},
        {"item_id": "a", "score": 0.9},
        {"item_id": "seen", "score": 0.95, "consumed": True},
        {"item_id": "c", "score": 0.1},
    ]
    await seed_hot(redis, ws, HotSeed(1, [("user_id", "warm")], recs=recs))
    await seed_hot(redis, ws, HotSeed(2, [("user_id", "cold")]))

    async def ask(user: str, **options: object) -> profile_pb2.GetRecommendationsResponse:
        return await profile_stub.GetRecommendations(
            profile_pb2.GetRecommendationsRequest(identifier=ident("user_id", user), **options),
            metadata=bearer(workspace.profile),
        )

    warm = await ask("warm", limit=2)
    assert [(r.item_id, r.score) for r in warm.recommendations] == [("a", 0.9), ("b", 0.4)]
    assert not warm.cold_start
    assert warm.profile.profile_id == "1"
    assert [(i.type, i.value) for i in warm.profile.identifiers] == [("user_id", "warm")]
    everything = await ask("warm", include_consumed=True)
    assert [r.item_id for r in everything.recommendations] == ["seen", "a", "b", "c"]
    cold = await ask("cold")
    assert cold.cold_start and not cold.recommendations
    for options, code in [
        ({"limit": 101}, grpc.StatusCode.INVALID_ARGUMENT),
        ({}, grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await ask("warm" if options else "nobody", **options)
        assert error.value.code() == code
