"""Account-level audiences through the segmentation API on real Postgres and Redis:
backfill, members named by group_id, preview, recompute with logged changes, explain
and history by group_id, merges across accounts, and the level rules as
INVALID_ARGUMENT with the node path."""

from __future__ import annotations

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, segmentation_pb2
from redis.asyncio import Redis

from services.shared.clock import US_PER_DAY
from services.shared.timestamps import timestamp_from_us
from tests.integration.segmentation.apisupport import Api, violations

pytestmark = pytest.mark.integration

ORDER = "Order Completed"
ANY_BUYER = {"account": {"match": "any", "condition": {"event": {"name": ORDER}}}}
ALL_BUYERS = {
    "all": [
        {"trait": {"name": "plan", "op": "eq", "value": "enterprise"}},
        {"account": {"match": "all", "condition": {"event": {"name": ORDER}}}},
    ]
}


def group_ids(refs: list[common_pb2.ProfileRef]) -> list[str]:
    return sorted(i.value for r in refs for i in r.identifiers if i.type == "group_id")


async def _members(api: Api, key: str, page_size: int = 0) -> list[str]:
    """The group_ids of every member, following page tokens."""
    refs, token = [], ""
    while True:
        page = await api.seg.ListMembers(
            segmentation_pb2.ListMembersRequest(
                audience_key=key, page_size=page_size, page_token=token
            ),
            metadata=api.admin,
        )
        refs += [m.profile for m in page.members]
        token = page.next_page_token
        if not token:
            return group_ids(refs)


async def _accounts(api: Api) -> None:
    await api.send(
        [
            {"type": "group", "user_id": "u1", "group_id": "acme", "traits": {"plan": "pro"}},
            {"type": "group", "user_id": "u2", "group_id": "acme"},
            {"type": "group", "user_id": "u3", "group_id": "beta", "traits": {"plan": "pro"}},
            {
                "type": "group",
                "user_id": "u3",
                "group_id": "beta",
                "traits": {"plan": "enterprise"},
                "days_ago": 0.5,
            },
            # An anonymous visitor joins gamma, then signs up as u1: u1 is in both.
            {"type": "group", "anonymous_id": "a9", "group_id": "gamma"},
            {"type": "identify", "user_id": "u1", "anonymous_id": "a9"},
            {"user_id": "u1", "event": ORDER},
            {"user_id": "u3", "event": ORDER},
        ]
    )


async def test_account_audience_end_to_end_in_the_api(  # type: ignore[no-untyped-def]
    api, clock, redis_url, workspace
) -> None:
    await _accounts(api)
    made = await api.create("buying_accounts", ANY_BUYER, account_level=True)
    assert made.account_level is True
    live = await api.live("buying_accounts")
    assert live.size == 3
    assert await _members(api, "buying_accounts") == ["acme", "beta", "gamma"]
    assert await _members(api, "buying_accounts", page_size=1) == ["acme", "beta", "gamma"]

    preview = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(
            definition=orjson.dumps(ALL_BUYERS), account_level=True, sample_limit=-1
        ),
        metadata=api.admin,
    )
    assert (preview.size, group_ids(list(preview.sample))) == (1, ["beta"])
    edit = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(
            definition=orjson.dumps(ALL_BUYERS), audience_key="buying_accounts"
        ),
        metadata=api.admin,
    )
    assert (edit.would_enter, edit.would_exit) == (0, 2)
    assert group_ids(list(edit.exit_sample)) == ["acme", "gamma"]

    # u2 buys too: every user of acme has bought; u1's merged anonymous visit keeps
    # gamma a buyer's account.
    await api.send([{"user_id": "u2", "event": ORDER}])
    await api.create(
        "all_bought",
        {"account": {"match": "all", "condition": {"event": {"name": ORDER}}}},
        account_level=True,
    )
    await api.live("all_bought")
    assert await _members(api, "all_bought") == ["acme", "beta", "gamma"]
    clock.advance(US_PER_DAY // 1_000_000)
    await api.send([{"type": "group", "user_id": "u4", "group_id": "acme"}])
    result = await api.seg.Recompute(segmentation_pb2.RecomputeRequest(), metadata=api.admin)
    assert (result.entered, result.exited, result.audiences) == (0, 1, 2)
    assert await _members(api, "all_bought") == ["beta", "gamma"]

    explained = await api.seg.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key="all_bought",
            identifier=common_pb2.Identifier(type="group_id", value="acme"),
        ),
        metadata=api.admin,
    )
    assert explained.member is False
    assert (explained.root.kind, explained.root.count) == ("account", 2)
    assert explained.root.summary == "2 of 3 users match; needs all"
    assert group_ids([explained.profile]) == ["acme"]
    assert [c.path for c in explained.root.children] == [
        f"account.condition[{i}].event" for i in range(3)
    ]

    history = await api.seg.GetMembershipHistory(
        segmentation_pb2.GetMembershipHistoryRequest(
            audience_key="all_bought",
            identifier=common_pb2.Identifier(type="group_id", value="acme"),
            at=timestamp_from_us(api.now_us),
        ),
        metadata=api.admin,
    )
    assert [c.kind for c in history.changes] == [
        segmentation_pb2.CHANGE_KIND_ENTERED,
        segmentation_pb2.CHANGE_KIND_EXITED,
    ]
    assert history.member_at is True
    assert group_ids([history.changes[0].profile]) == ["acme"]
    changes = await api.changes()
    assert {c.audience_key for c in changes} == {"buying_accounts", "all_bought"}

    # Accounts have no hot state: no profile hash names these audiences.
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{workspace.workspace_id}*audiences")]
        for k in keys:
            assert not set(await client.hkeys(k)) & {b"buying_accounts", b"all_bought"}
    finally:
        await client.aclose()


async def test_levels_are_checked_and_nothing_is_saved(api) -> None:  # type: ignore[no-untyped-def]
    await _accounts(api)
    await api.create("buying_accounts", ANY_BUYER, account_level=True)
    await api.live("buying_accounts")
    bad = [
        (
            {"all": [{"event": {"name": ORDER}}, ANY_BUYER]},
            True,
            "audience.definition.all[0].event",
            "a event condition is about users: in an account-level audience it goes inside "
            "an account node",
        ),
        (
            ANY_BUYER,
            False,
            "audience.definition.account",
            "account conditions need an account-level audience",
        ),
        (
            {"not": {"audience": {"key": "buying_accounts"}}},
            False,
            "audience.definition.not.audience.key",
            "audience 'buying_accounts' is account-level: its members are accounts, not users",
        ),
    ]
    for definition, level, field, reason in bad:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.create("bad", definition, account_level=level)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(error.value) == {field: reason}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.GetAudience(
            segmentation_pb2.GetAudienceRequest(key="bad"), metadata=api.admin
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.ExplainMembership(
            segmentation_pb2.ExplainMembershipRequest(
                audience_key="buying_accounts",
                identifier=common_pb2.Identifier(type="user_id", value="u1"),
            ),
            metadata=api.admin,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error.value)) == {"identifier.type"}
