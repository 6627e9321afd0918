"""Context audiences end to end on real Postgres and Redis: defined through
segmentation, evaluated per request by GetProfile and the HTTP view of the profile
service (which never imports segmentation), refused where stored members are needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, profile_pb2, profile_pb2_grpc, segmentation_pb2
from redis.asyncio import Redis

from services.profile import httpview
from services.profile.app import build
from services.shared.errors import field_violations
from services.shared.holdout import bucket, in_holdout
from services.shared.lift_chart import render
from services.shared.timestamps import timestamp_from_us
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.integration.segmentation.apisupport import Api

pytestmark = pytest.mark.integration

ORDER = "Order Completed"
MOBILE_DE_CAMPAIGN = {
    "all": [
        {"audience": {"key": "repeat"}},
        {"context": {"attribute": "device_type", "op": "eq", "value": "mobile"}},
        {"context": {"attribute": "country", "op": "in", "value": ["DE", "AT"]}},
        {"context": {"attribute": "utm_campaign", "op": "exists"}},
    ]
}
EVENING = {"context": {"attribute": "local_hour", "op": "gte", "value": 18}}
ON_MOBILE = common_pb2.RequestContext(device_type="mobile", country="AT", utm_campaign="spring")


@dataclass
class Stack:
    api: Api
    profile: profile_pb2_grpc.ProfileServiceStub
    reader: tuple[tuple[str, str], ...]

    async def get(
        self, user: str, context: common_pb2.RequestContext | None = None
    ) -> profile_pb2.Profile:
        request = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=user)
        )
        if context is not None:
            request.context.CopyFrom(context)
        return await self.profile.GetProfile(request, metadata=self.reader)


@pytest.fixture
async def stack(resources, workspace, clock) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    from audiences.v1 import ingest_pb2_grpc, segmentation_pb2_grpc

    async with in_process(resources, ["ingest", "segmentation", "profile"]) as addresses:
        channels = {name: grpc.aio.insecure_channel(a) for name, a in addresses.items()}
        api = Api(
            ingest_pb2_grpc.IngestServiceStub(channels["ingest"]),
            segmentation_pb2_grpc.SegmentationServiceStub(channels["segmentation"]),
            bearer(workspace.admin),
            bearer(workspace.ingest),
            clock.now_us(),
        )
        yield Stack(
            api, profile_pb2_grpc.ProfileServiceStub(channels["profile"]), bearer(workspace.profile)
        )
        for channel in channels.values():
            await channel.close()


async def _setup(stack: Stack) -> None:
    await stack.api.send([{"user_id": u, "event": ORDER} for u in ("u1", "u1", "u2")])
    await stack.api.create("repeat", {"event": {"name": ORDER, "count": {"op": "gte", "value": 2}}})
    await stack.api.live("repeat")


def _keys(profile: profile_pb2.Profile) -> list[str]:
    return [a.key for a in profile.context_audiences]


async def test_get_profile_answers_context_audiences_per_request(stack: Stack) -> None:
    await _setup(stack)
    created = await stack.api.create("mobile_campaign", MOBILE_DE_CAMPAIGN)
    # Nothing to backfill: live at once, no members stored.
    assert created.state == segmentation_pb2.AUDIENCE_STATE_LIVE
    assert created.size == 0
    await stack.api.create("evening", EVENING)

    u1 = await stack.get("u1", ON_MOBILE)
    assert [a.key for a in u1.audiences] == ["repeat"]
    assert _keys(u1) == ["mobile_campaign"]
    assert _keys(await stack.get("u2", ON_MOBILE)) == []  # not a repeat buyer
    desktop = common_pb2.RequestContext(device_type="desktop", country="DE", utm_campaign="x")
    assert _keys(await stack.get("u1", desktop)) == []
    assert _keys(await stack.get("u1")) == []  # no context: no context audiences

    # local_hour from the request's instant in the visitor's time zone.
    at = timestamp_from_us(1_735_689_600_000_000 + 17 * 3_600_000_000)  # 17:00 UTC
    berlin = common_pb2.RequestContext(time_zone="Europe/Berlin", at=at)  # 18:00 there
    assert _keys(await stack.get("u2", berlin)) == ["evening"]
    london = common_pb2.RequestContext(time_zone="Europe/London", at=at)
    assert _keys(await stack.get("u2", london)) == []

    # An edit is seen by the next request (the cache follows the published version).
    edited = {**MOBILE_DE_CAMPAIGN}
    edited["all"] = [
        *MOBILE_DE_CAMPAIGN["all"][:2],
        {"context": {"attribute": "country", "op": "eq", "value": "FR"}},
    ]
    await stack.api.seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(
                key="mobile_campaign", definition=orjson.dumps(edited)
            )
        ),
        metadata=stack.api.admin,
    )
    assert _keys(await stack.get("u1", ON_MOBILE)) == []
    fr = common_pb2.RequestContext(device_type="mobile", country="FR")
    assert _keys(await stack.get("u1", fr)) == ["mobile_campaign"]
    await stack.api.seg.DeleteAudience(
        segmentation_pb2.DeleteAudienceRequest(key="mobile_campaign"), metadata=stack.api.admin
    )
    assert _keys(await stack.get("u1", fr)) == []


async def test_context_audiences_have_no_stored_members(stack: Stack) -> None:
    await _setup(stack)
    await stack.api.create("mobile_campaign", MOBILE_DE_CAMPAIGN)
    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await stack.api.members("mobile_campaign")
    assert listed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no stored members" in (listed.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as previewed:
        await stack.api.seg.Preview(
            segmentation_pb2.PreviewRequest(definition=orjson.dumps(EVENING)),
            metadata=stack.api.admin,
        )
    assert previewed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Recompute of the workspace leaves it alone and succeeds.
    result = await stack.api.seg.Recompute(
        segmentation_pb2.RecomputeRequest(), metadata=stack.api.admin
    )
    assert list(result.failures) == []

    explained = await stack.api.seg.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key="mobile_campaign",
            identifier=common_pb2.Identifier(type="user_id", value="u1"),
            context=ON_MOBILE,
        ),
        metadata=stack.api.admin,
    )
    assert explained.member
    summaries = [c.summary for c in explained.root.children]
    assert summaries[1] == "context device_type is 'mobile'; needs eq 'mobile'"
    # A context audience built on another one: explained as GetProfile answers it.
    await stack.api.create("campaign_alias", {"audience": {"key": "mobile_campaign"}})
    for context, member in ((ON_MOBILE, True), (common_pb2.RequestContext(os="x"), False)):
        aliased = await stack.api.seg.ExplainMembership(
            segmentation_pb2.ExplainMembershipRequest(
                audience_key="campaign_alias",
                identifier=common_pb2.Identifier(type="user_id", value="u1"),
                context=context,
            ),
            metadata=stack.api.admin,
        )
        assert aliased.member is member
        assert _keys(await stack.get("u1", context)) == (
            ["mobile_campaign", "campaign_alias"] if member else []
        )


@pytest.mark.parametrize(
    ("definition", "extra", "fields"),
    [
        (
            {"all": [{"event": {"name": ORDER}}, EVENING]},
            {},
            {"audience.definition.all[0].event"},
        ),
        (EVENING, {"realtime": True}, {"audience.realtime"}),
        (
            {"context": {"attribute": "weather", "op": "eq", "value": "rain"}},
            {},
            {"audience.definition.context.attribute"},
        ),
    ],
)
async def test_context_nodes_are_refused_where_stored_membership_is_needed(
    stack: Stack, definition: Any, extra: dict[str, Any], fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.api.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="bad", definition=orjson.dumps(definition), **extra
                )
            ),
            metadata=stack.api.admin,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in field_violations(refused.value)} == fields


async def test_bad_context_is_invalid_argument_with_field_violations(stack: Stack) -> None:
    await _setup(stack)
    bad = common_pb2.RequestContext(
        page_url="https://example.com/" + "x" * 3000,
        time_zone="Mars/Olympus",
        custom=orjson.dumps({"plan": {"nested": 1}, "ok": 1}),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.get("u1", bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in field_violations(refused.value)} == {
        "context.page_url",
        "context.time_zone",
        "context.custom.plan",
    }
    with pytest.raises(grpc.aio.AioRpcError) as not_json:
        await stack.get("u1", common_pb2.RequestContext(custom=b"{nope"))
    assert {v.field for v in field_violations(not_json.value)} == {"context.custom"}


async def test_http_view_takes_a_context(stack: Stack, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    await _setup(stack)
    await stack.api.create("mobile_campaign", MOBILE_DE_CAMPAIGN)
    runner, port = await httpview.start(build(resources), resources.keys, "127.0.0.1", 0)
    headers = {"Authorization": f"Bearer {workspace.profile}"}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers) as http:
            context = {"device_type": "mobile", "country": "DE", "utm": {"campaign": "spring"}}
            async with http.get(
                "/v1/profiles/user_id:u1/audiences",
                params={"context": orjson.dumps(context).decode()},
            ) as reply:
                assert reply.status == 200
                body = await reply.json()
            assert list(body["audiences"]) == ["repeat"]
            assert body["context_audiences"] == {"mobile_campaign": {"holdout": False}}
            async with http.get(
                "/v1/profiles/user_id:u1/audiences", params={"context": '{"country": 5}'}
            ) as reply:
                assert reply.status == 400
                assert "context.country" in await reply.text()
    finally:
        await runner.cleanup()


async def test_holdout_flags_follow_the_shared_hash(stack: Stack, redis_url: str) -> None:
    users = [f"h{i}" for i in range(40)]
    await stack.api.send([{"user_id": u, "event": ORDER} for u in users])
    created = await stack.api.seg.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(
                key="buyers",
                definition=orjson.dumps({"event": {"name": ORDER}}),
                holdout_share=0.5,
            )
        ),
        metadata=stack.api.admin,
    )
    assert created.holdout_share == 0.5
    await stack.api.live("buyers")
    await stack.api.create(
        "buyers_mobile",
        {
            "all": [
                {"audience": {"key": "buyers"}},
                {"context": {"attribute": "os", "op": "exists"}},
            ]
        },
    )

    async def flags() -> dict[str, bool]:
        got = {}
        for u in users:
            p = await stack.get(u, common_pb2.RequestContext(os="iOS"))
            (membership,) = p.audiences
            got[p.profile_id] = membership.holdout
        return got

    first = await flags()
    assert first == {pid: in_holdout("buyers", pid, 0.5) for pid in first}
    # BatchGetProfiles (JSON rows, flags set in Python) says the same.
    batch = await stack.profile.BatchGetProfiles(
        profile_pb2.BatchGetProfilesRequest(
            identifiers=[common_pb2.Identifier(type="user_id", value=u) for u in users]
        ),
        metadata=stack.reader,
    )
    assert {p.profile.profile_id: p.profile.audiences[0].holdout for p in batch.profiles} == first
    assert 0 < sum(first.values()) < len(first)  # both groups exist at 50%
    # The Lua script's sha1 bucket equals the library's for the same ids.
    client = Redis.from_url(redis_url)
    try:
        for pid in first:
            lua = await client.eval(
                "return string.sub(redis.sha1hex(ARGV[1] .. ':' .. ARGV[2]), 1, 8)",
                0,
                "buyers",
                pid,
            )
            assert int(lua, 16) / 4294967296 == bucket("buyers", pid)
    finally:
        await client.aclose()
    # A new share applies to the next read (cached encodings carry the config version).
    await stack.api.seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(key="buyers", holdout_share=0.0)
        ),
        metadata=stack.api.admin,
    )
    assert not any((await flags()).values())
    # A context audience's holdout comes with it.
    await stack.api.seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(key="buyers_mobile", holdout_share=0.5)
        ),
        metadata=stack.api.admin,
    )
    for u in users[:10]:
        p = await stack.get(u, common_pb2.RequestContext(os="iOS"))
        (ctx_audience,) = p.context_audiences
        assert ctx_audience.key == "buyers_mobile"
        assert ctx_audience.holdout == in_holdout("buyers_mobile", p.profile_id, 0.5)


async def test_holdout_share_and_goal_are_validated(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.api.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="x",
                    definition=orjson.dumps(EVENING),
                    holdout_share=0.9,
                    goal=orjson.dumps({"name": "", "within_hours": -1, "where": [{"op": "eq"}]}),
                )
            ),
            metadata=stack.api.admin,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in field_violations(refused.value)} == {
        "audience.holdout_share",
        "audience.goal.name",
        "audience.goal.within_hours",
        "audience.goal.where[0].property",
        "audience.goal.where[0].value",
    }


async def test_audience_performance_counts_groups_and_conversions(
    stack: Stack, tmp_path: Path
) -> None:
    users = [f"e{i}" for i in range(12)]
    exposure = "Audience Exposure"
    await stack.api.send(
        [{"user_id": u, "event": exposure, "properties": {"audience": "buyers"}, "days_ago": 3}
         for u in users]
        # A second exposure later does not move the first; another audience's is ignored.
        + [{"user_id": "e0", "event": exposure, "properties": {"audience": "buyers"},
            "days_ago": 1},
           {"user_id": "x", "event": exposure, "properties": {"audience": "other"},
            "days_ago": 3}]
        + [{"user_id": u, "event": ORDER, "properties": {"total": 10}, "days_ago": 2}
           for u in users[:6]]
        + [{"user_id": "e6", "event": ORDER, "properties": {"total": 10}, "days_ago": 5},
           {"user_id": "e7", "event": ORDER, "properties": {"total": 1}, "days_ago": 2},
           {"user_id": "e8", "event": ORDER, "properties": {"total": 10}, "days_ago": 0.5}]
    )  # fmt: skip
    await stack.api.seg.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(
                key="buyers",
                definition=orjson.dumps({"event": {"name": exposure}}),
                holdout_share=0.5,
                goal=orjson.dumps(
                    {"name": ORDER, "within_hours": 48,
                     "where": [{"property": "total", "op": "gte", "value": 5}]}
                ),
            )
        ),
        metadata=stack.api.admin,
    )  # fmt: skip
    pids = {u: (await stack.get(u)).profile_id for u in users}
    held = {u for u in users if in_holdout("buyers", pids[u], 0.5)}
    converted = set(users[:6])  # e6 ordered before, e7 below the filter, e8 after 48 h
    report = await stack.api.seg.GetAudiencePerformance(
        segmentation_pb2.GetAudiencePerformanceRequest(audience_key="buyers"),
        metadata=stack.api.admin,
    )
    total = report.total
    assert total.treatment.exposed == len(set(users) - held)
    assert total.holdout.exposed == len(held)
    assert total.treatment.converted == len(converted - held)
    assert total.holdout.converted == len(converted & held)
    assert len(report.days) == 1  # every first exposure on one day
    assert report.days[0].treatment == total.treatment
    assert report.sample_ratio.expected_holdout_share == 0.5
    if total.holdout.converted and total.treatment.converted:
        assert total.lift.relative_defined
    pt = total.treatment.converted / total.treatment.exposed
    ph = total.holdout.converted / total.holdout.exposed
    assert total.lift.absolute == pytest.approx(pt - ph)
    assert total.lift.absolute_low < total.lift.absolute < total.lift.absolute_high
    chart = tmp_path / "lift.png"
    render(report, chart)  # the lift-chart command's drawing of this very report
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(grpc.aio.AioRpcError) as no_goal:
        await stack.api.create("nogoal", {"event": {"name": ORDER}})
        await stack.api.seg.GetAudiencePerformance(
            segmentation_pb2.GetAudiencePerformanceRequest(audience_key="nogoal"),
            metadata=stack.api.admin,
        )
    assert no_goal.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_get_profile_logs_exposures_of_measured_audiences(stack: Stack) -> None:
    users = [f"l{i}" for i in range(6)]
    await stack.api.send([{"user_id": u, "event": ORDER, "days_ago": 2} for u in users])
    goal = orjson.dumps({"name": "Upgraded", "within_hours": 24})
    for key, definition in (
        ("buyers", {"event": {"name": ORDER}}),
        ("plain", {"event": {"name": ORDER}}),
    ):
        await stack.api.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key=key,
                    definition=orjson.dumps(definition),
                    goal=goal if key == "buyers" else b"",
                )
            ),
            metadata=stack.api.admin,
        )
        await stack.api.live(key)
    await stack.api.create(
        "buyers_ios",
        {
            "all": [
                {"audience": {"key": "buyers"}},
                {"context": {"attribute": "os", "op": "eq", "value": "iOS"}},
            ]
        },
    )
    for u in users:
        request = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=u), log_exposure=True
        )
        answer = await stack.profile.GetProfile(request, metadata=stack.reader)
        assert {a.key for a in answer.audiences} == {"buyers", "plain"}
        assert not answer.context_audiences  # no context: none evaluated
    # Written off the request path: poll the performance report until all six show.
    deadline = time.monotonic() + 20
    while True:
        report = await stack.api.seg.GetAudiencePerformance(
            segmentation_pb2.GetAudiencePerformanceRequest(audience_key="buyers"),
            metadata=stack.api.admin,
        )
        exposed = report.total.treatment.exposed + report.total.holdout.exposed
        if exposed == len(users) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)  # polling with a deadline
    assert exposed == len(users)
    assert report.total.treatment.converted == 0
