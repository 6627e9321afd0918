"""GetProfile and BatchGetProfiles answer from the Redis hot state, by any identifier."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import common_pb2, profile_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from services.shared.errors import field_violations
from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer
from tests.integration.profile.seeding import HotSeed, seed_hot, seed_hot_merge

pytestmark = pytest.mark.integration

NOW = 1_735_689_600_000_000

ADA = HotSeed(
    profile_id=7,
    identifiers=[
        ("user_id", "u-ada"),
        ("anonymous_id", "anon-1"),
        ("email", "ada@example.com"),
        ("device_id", "dev-9"),
        ("crm_id", "C-0042"),
    ],
    traits={
        "name": "Ada",
        "plan": "pro",
        "age": 36,
        "big": 2**61 + 1,
        "ratio": 0.1,
        "tags": ["a", "b"],
        "address": {"city": "Lyon", "zip": "69001"},
        "quote": 'say "hi"/\\ \u00e9',
    },
    computed={"orders_90d": 4, "favourite_colour": "green"},
    audiences={"vip": NOW - 86_400_000_000, "churn_risk": NOW - 3_000_001},
    predictions={
        "purchase_7d": {
            "probability": 0.83,
            "percentile": 97.5,
            "scored_at_us": NOW - 60_000_000,
            "top_features": ["orders_90d", "recency"],
        },
        "churn_30d": {"probability": 0.05, "percentile": 12.0, "scored_at_us": NOW},
    },
    recs=[
        {"item_id": "sku-1", "score": 0.9},
        {"item_id": "sku-2", "score": 0.7, "consumed": True},
        {"item_id": "sku-3", "score": 0.5},
    ],
    last_seen_us=NOW - 5_000_000,
    created_at_us=NOW - 10 * 86_400_000_000,
)


def ident(id_type: str, value: str) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=id_type, value=value)


def us(stamp) -> int:  # type: ignore[no-untyped-def]
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


@pytest.fixture
async def redis(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def snapshot(redis: redis_asyncio.Redis, workspace_id: str) -> dict[bytes, bytes]:
    """Every key of the workspace with its serialized value: proof a call changed nothing.

    Scoped to the workspace because the test Redis db may be shared with other runs.
    """
    keys = await redis.keys(f"hs:{{{workspace_id}}}:*")
    return {key: await redis.dump(key) for key in keys}


async def test_every_section_by_every_identifier_type(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    for id_type, id_value in ADA.identifiers:
        profile = await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(identifier=ident(id_type, id_value)),
            metadata=bearer(workspace.profile),
        )
        assert profile.profile_id == "7"
        # Integers stay integers (2**61 + 1 would not survive a double).
        assert orjson.loads(profile.traits) == ADA.traits
        assert orjson.loads(profile.computed_traits) == ADA.computed
        assert {a.key: us(a.entered_at) for a in profile.audiences} == ADA.audiences
        scores = {p.key: p for p in profile.predictions}
        assert set(scores) == set(ADA.predictions)
        for key, seeded in ADA.predictions.items():
            assert scores[key].probability == seeded["probability"]
            assert scores[key].percentile == seeded["percentile"]
            assert us(scores[key].scored_at) == seeded["scored_at_us"]
            assert list(scores[key].top_features) == seeded.get("top_features", [])
        # Consumed items are not recommended in the profile view.
        assert [r.item_id for r in profile.recommendations] == ["sku-1", "sku-3"]
        assert {(i.type, i.value) for i in profile.identifiers} == set(ADA.identifiers)
        assert us(profile.last_seen) == ADA.last_seen_us


async def test_merged_identifiers_resolve_to_the_survivor(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    await seed_hot_merge(
        redis, workspace.workspace_id, 99, ADA.profile_id, [("anonymous_id", "old-anon")]
    )
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("anonymous_id", "old-anon")),
        metadata=bearer(workspace.profile),
    )
    assert profile.profile_id == str(ADA.profile_id)
    assert orjson.loads(profile.traits) == ADA.traits
    assert ("anonymous_id", "old-anon") in {(i.type, i.value) for i in profile.identifiers}


async def test_include_selects_sections_and_the_mask_selects_traits(  # type: ignore[no-untyped-def]
    profile_stub, workspace, redis
) -> None:
    await seed_hot(redis, workspace.workspace_id, ADA)
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(
            identifier=ident("email", "ada@example.com"),
            include=[profile_pb2.PROFILE_SECTION_TRAITS, profile_pb2.PROFILE_SECTION_AUDIENCES],
            trait_mask=FieldMask(paths=["plan", "big", "address", "never-set"]),
        ),
        metadata=bearer(workspace.profile),
    )
    wanted = {k: ADA.traits[k] for k in ("plan", "big", "address")}
    assert orjson.loads(profile.traits) == wanted
    assert {a.key for a in profile.audiences} == set(ADA.audiences)
    assert profile.computed_traits == b""
    assert not profile.predictions and not profile.recommendations and not profile.identifiers

    only_computed = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(
            identifier=ident("user_id", "u-ada"),
            include=[profile_pb2.PROFILE_SECTION_COMPUTED_TRAITS],
        ),
        metadata=bearer(workspace.profile),
    )
    assert only_computed.traits == b""
    assert orjson.loads(only_computed.computed_traits) == ADA.computed
    assert not only_computed.audiences


async def test_a_profile_with_empty_sections_is_still_found(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(
        redis, workspace.workspace_id, HotSeed(profile_id=3, identifiers=[("user_id", "bare")])
    )
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("user_id", "bare")),
        metadata=bearer(workspace.profile),
    )
    assert profile.profile_id == "3"
    assert orjson.loads(profile.traits) == {}
    assert orjson.loads(profile.computed_traits) == {}
    assert not profile.HasField("last_seen")


async def test_unknown_identifier_is_not_found(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(identifier=ident("user_id", "nobody")),
            metadata=bearer(workspace.profile),
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("id_type", "id_value", "bad_field"),
    [
        ("", "x", "identifier.type"),
        ("Email", "ada@example.com", "identifier.type"),
        ("crm:id", "x", "identifier.type"),
        ("a" * 65, "x", "identifier.type"),
        ("user_id", "", "identifier.value"),
        ("user_id", "x" * 256, "identifier.value"),
    ],
)
async def test_malformed_identifiers_are_invalid_argument_and_change_nothing(  # type: ignore[no-untyped-def]
    profile_stub, workspace, redis, id_type, id_value, bad_field
) -> None:
    await seed_hot(redis, workspace.workspace_id, ADA)
    before = await snapshot(redis, workspace.workspace_id)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(identifier=ident(id_type, id_value)),
            metadata=bearer(workspace.profile),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error.value)] == [bad_field]
    assert await snapshot(redis, workspace.workspace_id) == before


async def test_the_longest_valid_identifier_is_accepted(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    long_type, long_value = "t" * 64, "v" * 255
    await seed_hot(
        redis, workspace.workspace_id, HotSeed(profile_id=5, identifiers=[(long_type, long_value)])
    )
    profile = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident(long_type, long_value)),
        metadata=bearer(workspace.profile),
    )
    assert profile.profile_id == "5"


async def test_bad_sections_and_mask_paths_name_the_field(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=ident("user_id", "u-ada"),
                include=[
                    profile_pb2.PROFILE_SECTION_TRAITS,
                    profile_pb2.PROFILE_SECTION_UNSPECIFIED,
                ],
            ),
            metadata=bearer(workspace.profile),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error.value)] == ["include[1]"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=ident("user_id", "u-ada"), trait_mask=FieldMask(paths=["plan", ""])
            ),
            metadata=bearer(workspace.profile),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error.value)] == ["trait_mask.paths[1]"]


async def test_a_key_of_one_workspace_never_sees_another_workspaces_profiles(  # type: ignore[no-untyped-def]
    profile_stub, resources, workspace, redis
) -> None:
    other = await make_workspace(resources, "globex")
    await seed_hot(redis, workspace.workspace_id, ADA)
    # The same identifier exists in the other workspace as a different person.
    theirs = HotSeed(profile_id=7, identifiers=[("user_id", "u-ada")], traits={"name": "Not Ada"})
    await seed_hot(redis, other.workspace_id, theirs)
    mine = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("user_id", "u-ada")),
        metadata=bearer(workspace.profile),
    )
    seen = await profile_stub.GetProfile(
        profile_pb2.GetProfileRequest(identifier=ident("user_id", "u-ada")),
        metadata=bearer(other.profile),
    )
    assert orjson.loads(mine.traits)["name"] == "Ada"
    assert orjson.loads(seen.traits) == {"name": "Not Ada"}
    # Identifiers only this workspace has are unknown to the other one.
    for id_type, id_value in ADA.identifiers[1:]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await profile_stub.GetProfile(
                profile_pb2.GetProfileRequest(identifier=ident(id_type, id_value)),
                metadata=bearer(other.profile),
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    batch = await profile_stub.BatchGetProfiles(
        profile_pb2.BatchGetProfilesRequest(identifiers=[ident("email", "ada@example.com")]),
        metadata=bearer(other.profile),
    )
    assert [p.found for p in batch.profiles] == [False]


async def test_keys_without_profile_read_are_refused(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile_stub.GetProfile(
            profile_pb2.GetProfileRequest(identifier=ident("user_id", "u-ada")),
            metadata=bearer(workspace.ingest),
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_batch_answers_in_request_order(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    bob = HotSeed(
        profile_id=8, identifiers=[("user_id", "u-bob")], traits={"name": "Bob", "plan": "free"}
    )
    await seed_hot(redis, workspace.workspace_id, bob)
    asked = [
        ident("user_id", "u-bob"),
        ident("user_id", "nobody"),
        ident("crm_id", "C-0042"),
        ident("user_id", "u-bob"),
    ]
    reply = await profile_stub.BatchGetProfiles(
        profile_pb2.BatchGetProfilesRequest(
            identifiers=asked,
            include=[profile_pb2.PROFILE_SECTION_TRAITS],
            trait_mask=FieldMask(paths=["name"]),
        ),
        metadata=bearer(workspace.profile),
    )
    assert [(p.identifier.type, p.identifier.value) for p in reply.profiles] == [
        (i.type, i.value) for i in asked
    ]
    assert [p.found for p in reply.profiles] == [True, False, True, True]
    assert [p.profile.profile_id for p in reply.profiles] == ["8", "", "7", "8"]
    assert [orjson.loads(p.profile.traits) for p in reply.profiles if p.found] == [
        {"name": "Bob"},
        {"name": "Ada"},
        {"name": "Bob"},
    ]


async def test_batch_limits_and_bad_entries(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    hundred = [ident("user_id", f"u{n}") for n in range(100)]
    reply = await profile_stub.BatchGetProfiles(
        profile_pb2.BatchGetProfilesRequest(identifiers=hundred),
        metadata=bearer(workspace.profile),
    )
    assert len(reply.profiles) == 100 and not any(p.found for p in reply.profiles)
    for identifiers, fields in [
        ([*hundred, ident("user_id", "u-ada")], ["identifiers"]),
        ([], ["identifiers"]),
        (
            [ident("user_id", "u-ada"), ident("BAD", "x"), ident("email", "")],
            ["identifiers[1].type", "identifiers[2].value"],
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await profile_stub.BatchGetProfiles(
                profile_pb2.BatchGetProfilesRequest(identifiers=identifiers),
                metadata=bearer(workspace.profile),
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(error.value)] == fields


async def test_get_profile_is_one_redis_round_trip(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    request = profile_pb2.GetProfileRequest(identifier=ident("email", "ada@example.com"))
    # The first call may load the script (NOSCRIPT, then EVAL); later ones are EVALSHA.
    await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    sentinel = f"sentinel-{uuid.uuid4()}"
    seen: list[str] = []
    async with redis.monitor() as monitor:
        await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
        batch = profile_pb2.BatchGetProfilesRequest(identifiers=[ident("user_id", "u-ada")] * 50)
        await profile_stub.BatchGetProfiles(batch, metadata=bearer(workspace.profile))
        await redis.echo(sentinel)
        async for command in monitor.listen():
            if sentinel in command["command"]:
                break
            # Commands a script runs are reported as coming from "lua"; count only
            # what crossed the network.
            if workspace.workspace_id in command["command"] and command["client_type"] != "lua":
                seen.append(command["command"].split()[0].upper())
    assert seen == ["EVALSHA", "EVALSHA"]


async def _script_calls(redis: redis_asyncio.Redis, workspace_id: str, calls) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Run `calls()` under MONITOR; the identity keys of each command that crossed the
    network (raising if anything but EVALSHA did)."""
    sentinel = f"sentinel-{uuid.uuid4()}"
    sent: list[list[str]] = []
    async with redis.monitor() as monitor:
        await calls()
        await redis.echo(sentinel)
        async for command in monitor.listen():
            if sentinel in command["command"]:
                break
            if workspace_id in command["command"] and command["client_type"] != "lua":
                words = command["command"].split()
                assert words[0].upper() == "EVALSHA", command
                sent.append(words[3 : 3 + int(words[2])])
    return sent


async def test_concurrent_get_profiles_are_one_round_trip_each(  # type: ignore[no-untyped-def]
    profile_stub, workspace, redis
) -> None:
    ws = workspace.workspace_id
    await seed_hot(redis, ws, ADA)
    request = profile_pb2.GetProfileRequest(identifier=ident("email", "ada@example.com"))
    await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    values = ["u-ada", *(f"nobody-{n}" for n in range(15))]
    replies: list = []  # type: ignore[type-arg]

    async def concurrently() -> None:
        calls = [
            profile_stub.GetProfile(
                profile_pb2.GetProfileRequest(identifier=ident("user_id", value)),
                metadata=bearer(workspace.profile),
            )
            for value in values
        ]
        replies.extend(await asyncio.gather(*calls, return_exceptions=True))

    sent = await _script_calls(redis, ws, concurrently)
    # Under concurrency too, every request's identity key went out exactly once, in
    # an EVALSHA, and nothing else crossed the network.
    keys = sorted(key.strip('"').rsplit(":", 1)[1] for command in sent for key in command)
    assert keys == sorted(values)
    assert len(sent) == len(values)
    assert replies[0].profile_id == "7"
    assert all(r.code() == grpc.StatusCode.NOT_FOUND for r in replies[1:])


async def _until(condition) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) until `condition()` holds: state polled, not a timed guess."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - no event to wait on: the server's connection state
            await asyncio.sleep(0.001)


async def test_reads_go_over_the_pipelined_connection_and_survive_its_loss(  # type: ignore[no-untyped-def]
    profile_stub, workspace, redis, resources
) -> None:
    await seed_hot(redis, workspace.workspace_id, ADA)
    request = profile_pb2.GetProfileRequest(identifier=ident("email", "ada@example.com"))
    assert (
        await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    ).profile_id == "7"
    pipelined = resources.pipelined
    client_id = await pipelined.execute("CLIENT", "ID")
    # Hold the connection's replies with a BLPOP, queue a GetProfile behind it, kill it.
    blocker = asyncio.ensure_future(pipelined.execute("BLPOP", f"q-{uuid.uuid4()}", 10))
    call = asyncio.ensure_future(
        profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    )
    await _until(lambda: pipelined.in_flight == 2)
    assert await redis.client_kill_filter(_id=client_id) == 1
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(redis_asyncio.ConnectionError):
        await blocker
    # The next call connects again and gets its answer.
    reply = await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    assert reply.profile_id == "7"
    assert await pipelined.execute("CLIENT", "ID") != client_id


async def test_a_flushed_script_cache_is_reloaded(profile_stub, workspace, redis) -> None:  # type: ignore[no-untyped-def]
    await seed_hot(redis, workspace.workspace_id, ADA)
    request = profile_pb2.GetProfileRequest(identifier=ident("user_id", "u-ada"))
    assert (
        await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
    ).profile_id == "7"
    # Like a Redis restart: the script is gone; the next read gets NOSCRIPT, loads it
    # (EVAL) and answers, and the one after is an EVALSHA again.
    await redis.script_flush()
    for _ in range(2):
        reply = await profile_stub.GetProfile(request, metadata=bearer(workspace.profile))
        assert reply.profile_id == "7"
    calls = await _script_calls(
        redis,
        workspace.workspace_id,
        lambda: profile_stub.GetProfile(request, metadata=bearer(workspace.profile)),
    )
    assert len(calls) == 1
