"""Duplicates, identity resolution and traits over gRPC against real Postgres and Redis."""

import orjson
import pytest
from audiences.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2
from sqlalchemy import insert, select

from services.shared.db.tables import merges, profiles, suppressions
from tests.helpers.grpc_client import bearer
from tests.integration.ingest.support import (
    NOW_US,
    canonical_of,
    event,
    hot_traits,
    hot_view,
    profile_views,
    stored_events,
    stream_entries,
)

pytestmark = pytest.mark.integration
T = NOW_US - 86_400_000_000  # a day before "now"


async def send(stub, workspace, *events):  # type: ignore[no-untyped-def]
    return await stub.Batch(
        ingest_pb2.BatchRequest(events=list(events)), metadata=bearer(workspace.ingest)
    )


async def test_duplicates_are_acknowledged_and_stored_once(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    first = await send(stub, workspace, event("track", "d1", user_id="u", at_us=T))
    again = await send(
        stub,
        workspace,
        event("track", "d1", user_id="u", at_us=T, properties={"different": True}),
        event("track", "d2", user_id="u", at_us=T),
        event("track", "d2", user_id="u", at_us=T),
    )
    statuses = [r.status for r in again.results]
    assert statuses == [
        ingest_pb2.EVENT_STATUS_DUPLICATE,
        ingest_pb2.EVENT_STATUS_ACCEPTED,
        ingest_pb2.EVENT_STATUS_DUPLICATE,
    ]
    assert again.results[0].seq == first.results[0].seq
    assert again.results[2].seq == again.results[1].seq
    rows = await stored_events(resources.engine)
    assert [r["message_id"] for r in rows] == ["d1", "d2"]
    assert rows[0]["properties"] is None  # the first accepted copy is kept
    assert len(await stream_entries(resources.redis)) == 2


async def test_anonymous_history_merges_into_the_identified_profile(
    stub, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    await send(stub, workspace, event("track", "a1", anonymous_id="anon-1", at_us=T))
    await send(
        stub,
        workspace,
        event(
            "identify",
            "u1",
            user_id="ada",
            at_us=T + 1,
            traits={"plan": "free", "email": "Ada@X.io"},
        ),
    )
    anon = await canonical_of(resources.engine, ws, "anonymous_id", "anon-1")
    ada = await canonical_of(resources.engine, ws, "user_id", "ada")
    assert anon != ada
    await send(
        stub,
        workspace,
        event(
            "identify",
            "l1",
            user_id="ada",
            anonymous_id="anon-1",
            at_us=T + 2,
            traits={"plan": "pro"},
        ),
    )
    survivor = await canonical_of(resources.engine, ws, "anonymous_id", "anon-1")
    assert survivor == await canonical_of(resources.engine, ws, "user_id", "ada")
    assert survivor == min(anon, ada)  # the older profile survives
    merged_away = max(anon, ada)
    async with resources.engine.connect() as connection:
        logged = (await connection.execute(select(merges))).one()
        canonical = (
            await connection.execute(
                select(profiles.c.canonical_id).where(profiles.c.profile_id == merged_away)
            )
        ).scalar_one()
    assert (logged.survivor_id, logged.merged_id) == (survivor, merged_away)
    assert canonical == survivor
    # Both histories now resolve to one profile with one set of traits.
    views = await profile_views(resources.engine, ws)
    assert views == {
        frozenset({"user_id:ada", "anonymous_id:anon-1", "email:ada@x.io"}): {
            "plan": "pro",
            "email": "Ada@X.io",
        }
    }
    assert await hot_traits(resources.redis, ws, survivor) == {"plan": "pro", "email": "Ada@X.io"}
    redirect = await resources.redis.get(f"hs:{{{ws}}}:merged:{merged_away}")
    assert int(redirect) == survivor
    assert int(await resources.redis.get(f"hs:{{{ws}}}:id:anonymous_id:anon-1")) == survivor
    entries = await stream_entries(resources.redis)
    merge_entries = [fields for _, fields in entries if fields["kind"] == "merge"]
    assert [(int(m["survivor_id"]), int(m["merged_id"])) for m in merge_entries] == [
        (survivor, merged_away)
    ]


async def test_two_user_ids_never_merge(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    await send(
        stub,
        workspace,
        event("identify", "x1", user_id="u1", anonymous_id="shared", at_us=T),
        event(
            "identify",
            "x2",
            user_id="u2",
            anonymous_id="shared",
            at_us=T + 1,
            traits={"name": "second"},
        ),
        event("alias", "x3", user_id="u2", previous_id="u1", at_us=T + 2),
    )
    u1 = await canonical_of(resources.engine, ws, "user_id", "u1")
    u2 = await canonical_of(resources.engine, ws, "user_id", "u2")
    assert u1 != u2
    # The shared anonymous id stays where it joined first; u2's event is u2's.
    assert await canonical_of(resources.engine, ws, "anonymous_id", "shared") == u1
    rows = await stored_events(resources.engine)
    assert [r["profile_id"] for r in rows] == [u1, u2, u2]
    assert await hot_traits(resources.redis, ws, u2) == {"name": "second"}
    async with resources.engine.connect() as connection:
        assert (await connection.execute(select(merges))).all() == []


async def test_out_of_order_identifies_converge(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    await send(
        stub,
        workspace,
        event("identify", "o3", user_id="u", at_us=T + 3, traits={"plan": "pro", "seats": None}),
    )
    await send(
        stub,
        workspace,
        event(
            "identify",
            "o1",
            user_id="u",
            at_us=T + 1,
            traits={"plan": "free", "seats": 5, "city": "Oslo"},
        ),
    )
    pid = await canonical_of(resources.engine, ws, "user_id", "u")
    expected = {"plan": "pro", "city": "Oslo"}  # seats was removed by the later identify
    assert await profile_views(resources.engine, ws) == {frozenset({"user_id:u"}): expected}
    assert await hot_traits(resources.redis, ws, pid) == expected


async def test_suppressed_identifiers_are_rejected_and_not_stored(
    stub, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    async with resources.engine.begin() as connection:
        await connection.execute(
            insert(suppressions).values(
                workspace_id=workspace.workspace_id,
                id_type="email",
                id_value="gone@x.io",
                created_at_us=T,
                active=True,
            )
        )
    reply = await send(
        stub,
        workspace,
        event("identify", "s1", user_id="u9", at_us=T, traits={"email": "Gone@x.io"}),
        event("track", "s2", user_id="u8", at_us=T),
    )
    assert [r.status for r in reply.results] == [
        ingest_pb2.EVENT_STATUS_REJECTED,
        ingest_pb2.EVENT_STATUS_ACCEPTED,
    ]
    (violation,) = reply.results[0].violations
    assert (violation.field, violation.reason) == (
        "events[0].traits.email",
        "suppressed: profile was deleted",
    )
    assert [r["message_id"] for r in await stored_events(resources.engine)] == ["s2"]


async def test_identity_rules_block_values_and_limit_links(
    stub, channel, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    updated = await admin.UpdateIdentityRules(
        admin_pb2.UpdateIdentityRulesRequest(
            identity_rules=orjson.dumps(
                {"blocked_values": ["n/a", "null"], "limits": {"device_id": 1}}
            )
        ),
        metadata=bearer(workspace.admin),
    )
    assert orjson.loads(updated.identity_rules)["limits"] == {"user_id": 1, "device_id": 1}
    reply = await send(
        stub,
        workspace,
        # "N/A" is blocked: it links nothing, so these two people stay apart.
        event("track", "r1", user_id="p1", anonymous_id="N/A", at_us=T),
        event("track", "r2", user_id="p2", anonymous_id="n/a", at_us=T),
        # Only one device per profile: the second device is not linked to p1.
        event("track", "r3", user_id="p1", context={"device": {"id": "d1"}}, at_us=T),
        event("track", "r4", user_id="p1", context={"device": {"id": "d2"}}, at_us=T),
        # Nothing usable at all: rejected rather than a profile per event.
        event("track", "r5", anonymous_id="null", at_us=T),
    )
    assert [r.status for r in reply.results][-1] == ingest_pb2.EVENT_STATUS_REJECTED
    views = await profile_views(resources.engine, ws)
    assert set(views) == {frozenset({"user_id:p1", "device_id:d1"}), frozenset({"user_id:p2"})}


async def test_bad_identity_rules_are_rejected_and_change_nothing(
    channel, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    import grpc

    from services.shared.errors import field_violations

    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.UpdateIdentityRules(
            admin_pb2.UpdateIdentityRulesRequest(identity_rules=b'{"limits": {"user_id": 0}}'),
            metadata=bearer(workspace.admin),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error.value)] == ["identity_rules.limits"]
    assert await resources.keys.get_workspace(workspace.workspace_id) == {
        **await resources.keys.get_workspace(workspace.workspace_id),
        "identity_rules": None,
    }


async def test_a_known_profile_seen_by_one_key_and_linked_in_the_same_batch(
    stub, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    """A group loads only the holder for an event whose one identifier is stored; a
    profile that another event of the group may link or merge must still be known
    with all its identifiers, or the limits are checked against part of them."""
    ws = workspace.workspace_id
    email = {"email": "E@x.io"}
    await send(
        stub,
        workspace,
        event("identify", "s1", user_id="u1", anonymous_id="a1", at_us=T, traits=email),
        event("identify", "s2", user_id="u2", at_us=T),
    )
    await send(
        stub,
        workspace,
        event("track", "b1", anonymous_id="a1", at_us=T + 1),
        # a1's profile holds user u1, which no event of this batch names: u2 cannot
        # join it (one user_id each), so a1 stays where it is.
        event("identify", "b2", user_id="u2", anonymous_id="a1", at_us=T + 2),
        event("track", "b3", user_id="u2", at_us=T + 3),
        event("identify", "b4", anonymous_id="a1", at_us=T + 4, context={"device": {"id": "d1"}}),
    )
    first = frozenset({"user_id:u1", "anonymous_id:a1", "email:e@x.io", "device_id:d1"})
    second = frozenset({"user_id:u2"})
    assert set(await profile_views(resources.engine, ws)) == {first, second}
    assert set(await hot_view(resources.redis, ws)) == {first, second}
