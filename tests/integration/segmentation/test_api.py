"""The segmentation API on real Postgres and Redis: definitions, validation errors that
change nothing, backfill, versioned edits, preview, paging, explain, history, watch,
merges, computed traits and the hot state the profile service reads."""

from __future__ import annotations

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, segmentation_pb2
from redis.asyncio import Redis

from services.shared.clock import US_PER_DAY
from services.shared.hotstate import profile_key
from services.shared.timestamps import timestamp_from_us
from tests.integration.segmentation.apisupport import Api, name_of, violations

pytestmark = pytest.mark.integration

ORDER = "Order Completed"


async def _hot_audiences(redis_url: str, ws: str, api: Api, user: str) -> dict[bytes, bytes]:
    explained = await api.seg.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key=(await _any_key(api)),
            identifier=common_pb2.Identifier(type="user_id", value=user),
        ),
        metadata=api.admin,
    )
    client = Redis.from_url(redis_url)
    try:
        return await client.hgetall(profile_key(ws, explained.profile.profile_id, "audiences"))
    finally:
        await client.aclose()


async def _any_key(api: Api) -> str:
    listed = await api.seg.ListAudiences(
        segmentation_pb2.ListAudiencesRequest(), metadata=api.admin
    )
    return listed.audiences[0].key


async def _orders(api: Api, counts: dict[str, int], days_ago: float = 1) -> None:
    await api.send(
        [
            {"user_id": u, "event": ORDER, "days_ago": days_ago}
            for u, n in counts.items()
            for _ in range(n)
        ]
    )


async def test_create_backfills_with_progress_log_and_hot_state(  # type: ignore[no-untyped-def]
    api,
    redis_url,
    workspace,
) -> None:
    await _orders(api, {"u1": 2, "u2": 1, "u3": 3})
    created = await api.create(
        "repeat", {"event": {"name": ORDER, "count": {"op": "gte", "value": 2}}}
    )
    assert created.state in (
        segmentation_pb2.AUDIENCE_STATE_BACKFILLING,
        segmentation_pb2.AUDIENCE_STATE_LIVE,
    )
    live = await api.live("repeat")
    assert live.size == 2
    assert live.backfill.done == live.backfill.total > 0
    assert sorted(await api.members("repeat")) == ["u1", "u3"]
    changes = await api.changes()
    assert [c.seq for c in changes] == [1, 2]
    assert {name_of(c.profile) for c in changes} == {"u1", "u3"}
    assert {c.kind for c in changes} == {segmentation_pb2.CHANGE_KIND_ENTERED}
    hot = await _hot_audiences(redis_url, workspace.workspace_id, api, "u1")
    assert hot == {b"repeat": str(api.now_us).encode()}
    assert await _hot_audiences(redis_url, workspace.workspace_id, api, "u2") == {}


async def test_bad_definition_names_the_node_and_saves_nothing(api) -> None:  # type: ignore[no-untyped-def]
    bad = {
        "all": [
            {"trait": {"name": "plan", "op": "eq", "value": "pro"}},
            {"event": {"name": ORDER, "count": {"op": "approx", "value": 2}}},
        ]
    }
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.create("bad", bad)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "unknown operator" in violations(error.value)["audience.definition.all[1].event.count.op"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.create("Bad-Key", {"event": {"name": ORDER}})
    assert set(violations(error.value)) == {"audience.key"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.create("ghost_ref", {"audience": {"key": "ghost"}})
    assert "no audience 'ghost'" in violations(error.value)["audience.definition.audience.key"]
    listed = await api.seg.ListAudiences(
        segmentation_pb2.ListAudiencesRequest(), metadata=api.admin
    )
    assert list(listed.audiences) == []
    assert await api.changes() == []


async def test_cycle_is_spelled_out_and_the_old_definition_stays(api) -> None:  # type: ignore[no-untyped-def]
    await api.create("a", {"event": {"name": ORDER}}, skip_backfill=True)
    await api.create("b", {"all": [{"audience": {"key": "a"}}]}, skip_backfill=True)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.UpdateAudience(
            segmentation_pb2.UpdateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="a", definition=orjson.dumps({"not": {"audience": {"key": "b"}}})
                )
            ),
            metadata=api.admin,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error.value)
    assert found == {
        "audience.definition.not.audience.key": "audience reference cycle: a -> b -> a"
    }
    a = await api.seg.GetAudience(segmentation_pb2.GetAudienceRequest(key="a"), metadata=api.admin)
    assert a.version == 1 and orjson.loads(a.definition) == {"event": {"name": ORDER}}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.DeleteAudience(
            segmentation_pb2.DeleteAudienceRequest(key="a"), metadata=api.admin
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "b" in error.value.details()


async def test_edit_versions_and_emits_only_the_differences(api) -> None:  # type: ignore[no-untyped-def]
    await _orders(api, {"u1": 1, "u2": 2, "u3": 3})
    await api.create("buyers", {"event": {"name": ORDER, "count": {"op": "gte", "value": 2}}})
    await api.live("buyers")
    before = await api.changes()
    edit = {"event": {"name": ORDER, "count": {"op": "lte", "value": 2}}}
    preview = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(
            definition=orjson.dumps(edit), audience_key="buyers", sample_limit=-1
        ),
        metadata=api.admin,
    )
    assert (preview.would_enter, preview.would_exit) == (1, 1)
    assert [name_of(r) for r in preview.enter_sample] == ["u1"]
    assert [name_of(r) for r in preview.exit_sample] == ["u3"]
    # The preview saved nothing.
    assert sorted(await api.members("buyers")) == ["u2", "u3"]
    assert len(await api.changes()) == len(before)

    updated = await api.seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(key="buyers", definition=orjson.dumps(edit))
        ),
        metadata=api.admin,
    )
    assert updated.version == 2
    live = await api.live("buyers", version=2)
    assert live.size == 2
    assert sorted(await api.members("buyers")) == ["u1", "u2"]
    after = await api.changes(before[-1].seq)
    assert [(name_of(c.profile), c.kind, c.audience_version) for c in after] == [
        ("u3", segmentation_pb2.CHANGE_KIND_EXITED, 2),
        ("u1", segmentation_pb2.CHANGE_KIND_ENTERED, 2),
    ]
    assert [c.seq for c in after] == [before[-1].seq + 1, before[-1].seq + 2]


async def test_time_passing_recompute_and_history(api, clock) -> None:  # type: ignore[no-untyped-def]
    await _orders(api, {"u1": 1}, days_ago=5)
    await api.create("recent", {"event": {"name": ORDER, "window": {"within_days": 7}}})
    await api.live("recent")
    assert await api.members("recent") == ["u1"]
    entered_at = api.now_us
    clock.advance(3 * 86_400)  # day 8 after the order: the window has run out
    result = await api.seg.Recompute(
        segmentation_pb2.RecomputeRequest(audience_key="recent"), metadata=api.admin
    )
    assert (result.entered, result.exited, result.audiences) == (0, 1, 1)
    assert await api.members("recent") == []
    # Back in time with as_of: a member again.
    again = await api.seg.Recompute(
        segmentation_pb2.RecomputeRequest(as_of=timestamp_from_us(entered_at)), metadata=api.admin
    )
    assert (again.entered, again.exited) == (1, 0)
    history = await api.seg.GetMembershipHistory(
        segmentation_pb2.GetMembershipHistoryRequest(
            audience_key="recent",
            identifier=common_pb2.Identifier(type="user_id", value="u1"),
            at=timestamp_from_us(entered_at + US_PER_DAY),
        ),
        metadata=api.admin,
    )
    kinds = [c.kind for c in history.changes]
    assert kinds == [
        segmentation_pb2.CHANGE_KIND_ENTERED,
        segmentation_pb2.CHANGE_KIND_EXITED,
        segmentation_pb2.CHANGE_KIND_ENTERED,
    ]
    assert history.member_at is True
    gone = await api.seg.GetMembershipHistory(
        segmentation_pb2.GetMembershipHistoryRequest(
            audience_key="recent",
            identifier=common_pb2.Identifier(type="user_id", value="u1"),
            at=timestamp_from_us(entered_at + 3 * US_PER_DAY),
        ),
        metadata=api.admin,
    )
    assert gone.member_at is False


async def test_preview_as_of_evaluates_dependencies_at_that_instant(api) -> None:  # type: ignore[no-untyped-def]
    await _orders(api, {"u1": 1}, days_ago=10)
    await _orders(api, {"u2": 1}, days_ago=1)
    await api.create("recent", {"event": {"name": ORDER, "window": {"within_days": 7}}})
    await api.live("recent")
    assert await api.members("recent") == ["u2"]
    ten_days_ago = timestamp_from_us(api.now_us - 9 * US_PER_DAY)
    reply = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(
            definition=orjson.dumps({"audience": {"key": "recent"}}),
            as_of=ten_days_ago,
            sample_limit=-1,
        ),
        metadata=api.admin,
    )
    assert [name_of(r) for r in reply.sample] == ["u1"]
    # Nothing of that evaluation was kept.
    assert await api.members("recent") == ["u2"]


async def test_members_page_with_a_stable_cursor(api) -> None:  # type: ignore[no-untyped-def]
    users = {f"u{i}": 1 for i in range(7)}
    await _orders(api, users)
    await api.create("all_buyers", {"event": {"name": ORDER}})
    await api.live("all_buyers")
    first = await api.seg.ListMembers(
        segmentation_pb2.ListMembersRequest(audience_key="all_buyers", page_size=3),
        metadata=api.admin,
    )
    assert len(first.members) == 3 and first.total == 7 and first.next_page_token
    assert sorted(await api.members("all_buyers", page_size=3)) == sorted(users)
    assert all(m.profile.identifiers for m in first.members)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key="all_buyers", page_token="nonsense"),
            metadata=api.admin,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error.value)) == {"page_token"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key="nope"), metadata=api.admin
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_explain_names_nodes_counts_and_events(api) -> None:  # type: ignore[no-untyped-def]
    seqs = await api.send(
        [
            {"user_id": "u1", "event": ORDER, "days_ago": 2},
            {"user_id": "u1", "event": ORDER, "days_ago": 40},
            {"type": "identify", "user_id": "u1", "traits": {"plan": "pro"}},
        ]
    )
    definition = {
        "all": [
            {"event": {"name": ORDER, "window": {"within_days": 30}}},
            {"not": {"trait": {"name": "plan", "op": "eq", "value": "pro"}}},
        ]
    }
    await api.create("non_pro_buyers", definition)
    await api.live("non_pro_buyers")
    reply = await api.seg.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key="non_pro_buyers",
            identifier=common_pb2.Identifier(type="user_id", value="u1"),
        ),
        metadata=api.admin,
    )
    assert reply.member is False
    root = reply.root
    assert (root.path, root.kind, root.result) == ("all", "all", False)
    event, negation = root.children
    assert (event.path, event.result, event.count) == ("all[0].event", True, 1)
    assert list(event.event_seqs) == [seqs[0]]
    assert (negation.path, negation.result) == ("all[1].not", False)
    trait = negation.children[0]
    assert trait.path == "all[1].not.trait" and trait.result is True
    assert orjson.loads(trait.value) == "pro"
    assert name_of(reply.profile) == "u1"


async def test_merged_histories_count_as_one(api) -> None:  # type: ignore[no-untyped-def]
    await api.send(
        [
            {"anonymous_id": "a1", "event": ORDER, "days_ago": 3},
            {"user_id": "u1", "event": ORDER, "days_ago": 2},
        ]
    )
    definition = {"event": {"name": ORDER, "count": {"op": "gte", "value": 2}}}
    await api.create("two_orders", definition)
    await api.live("two_orders")
    assert await api.members("two_orders") == []
    await api.send([{"type": "identify", "user_id": "u1", "anonymous_id": "a1", "traits": {}}])
    await api.seg.Recompute(segmentation_pb2.RecomputeRequest(), metadata=api.admin)
    assert await api.members("two_orders") == ["u1"]
    members = await api.seg.ListMembers(
        segmentation_pb2.ListMembersRequest(audience_key="two_orders"), metadata=api.admin
    )
    ids = {(i.type, i.value) for i in members.members[0].profile.identifiers}
    assert {("user_id", "u1"), ("anonymous_id", "a1")} <= ids


async def test_computed_traits_values_conditions_and_hot_state(  # type: ignore[no-untyped-def]
    api,
    redis_url,
    workspace,
) -> None:
    await api.send(
        [
            {"user_id": "u1", "event": ORDER, "properties": {"revenue": 30}},
            {"user_id": "u1", "event": ORDER, "properties": {"revenue": 20.5}},
            {"user_id": "u2", "event": ORDER, "properties": {"revenue": "12"}},
        ]
    )
    definition = {"type": "sum", "event": ORDER, "property": "revenue"}
    await api.seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key="revenue", definition=orjson.dumps(definition)
            )
        ),
        metadata=api.admin,
    )
    await api.computed_live("revenue")
    preview = await api.seg.PreviewComputedTrait(
        segmentation_pb2.PreviewComputedTraitRequest(
            definition=orjson.dumps(definition), sample_limit=-1
        ),
        metadata=api.admin,
    )
    values = {name_of(v.profile): orjson.loads(v.value) for v in preview.values}
    assert values == {"u1": 50.5, "u2": 0}
    client = Redis.from_url(redis_url)
    try:
        pid = next(v.profile.profile_id for v in preview.values if name_of(v.profile) == "u1")
        hot = await client.hgetall(profile_key(workspace.workspace_id, pid, "computed"))
    finally:
        await client.aclose()
    assert orjson.loads(hot[b"revenue"]) == 50.5
    await api.create("big", {"computed": {"key": "revenue", "op": "gt", "value": 40}})
    await api.live("big")
    assert await api.members("big") == ["u1"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.DeleteComputedTrait(
            segmentation_pb2.DeleteComputedTraitRequest(key="revenue"), metadata=api.admin
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.CreateComputedTrait(
            segmentation_pb2.CreateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(
                    key="bad", definition=orjson.dumps({"type": "median", "event": ORDER})
                )
            ),
            metadata=api.admin,
        )
    assert "computed_trait.definition.type" in violations(error.value)
    listed = await api.seg.ListComputedTraits(
        segmentation_pb2.ListComputedTraitsRequest(), metadata=api.admin
    )
    assert [c.key for c in listed.computed_traits] == ["revenue"]


async def test_delete_logs_exits_and_clears_hot_state(api, redis_url, workspace) -> None:  # type: ignore[no-untyped-def]
    await _orders(api, {"u1": 1})
    await api.create("buyers", {"event": {"name": ORDER}})
    await api.live("buyers")
    [entered] = await api.changes()
    await api.seg.DeleteAudience(
        segmentation_pb2.DeleteAudienceRequest(key="buyers"), metadata=api.admin
    )
    [exited] = await api.changes(entered.seq)
    assert exited.kind == segmentation_pb2.CHANGE_KIND_EXITED and exited.audience_key == "buyers"
    client = Redis.from_url(redis_url)
    try:
        hot = await client.hgetall(
            profile_key(workspace.workspace_id, entered.profile.profile_id, "audiences")
        )
    finally:
        await client.aclose()
    assert hot == {}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.GetAudience(
            segmentation_pb2.GetAudienceRequest(key="buyers"), metadata=api.admin
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # The key can be used again; the old change log stays.
    await api.create("buyers", {"event": {"name": ORDER}})
    await api.live("buyers")
    assert [c.seq for c in await api.changes()] == [1, 2, 3]


async def test_bad_preview_requests(api) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.Preview(
            segmentation_pb2.PreviewRequest(definition=b"{not json"), metadata=api.admin
        )
    assert violations(error.value) == {"definition": "not valid JSON"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.Preview(
            segmentation_pb2.PreviewRequest(
                definition=orjson.dumps({"event": {"name": ORDER, "window": {"within_days": -1}}}),
            ),
            metadata=api.admin,
        )
    assert set(violations(error.value)) == {"definition.event.window.within_days"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.Preview(
            segmentation_pb2.PreviewRequest(
                definition=orjson.dumps({"event": {"name": ORDER}}), sample_limit=-5
            ),
            metadata=api.admin,
        )
    assert set(violations(error.value)) == {"sample_limit"}
