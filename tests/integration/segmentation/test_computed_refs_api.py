"""Filters comparing with the profile's computed traits (``ref.computed``) through the
segmentation API on real Postgres and Redis: audiences, Preview (now and as of an
instant), PreviewComputedTrait, ExplainMembership, computed traits reading computed
traits in dependency order, and the refusals (unknown keys, cycles, deletes)."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, segmentation_pb2

from services.shared.clock import US_PER_DAY
from services.shared.timestamps import timestamp_from_us
from tests.integration.segmentation.apisupport import Api, name_of, violations

pytestmark = pytest.mark.integration

ORDER, VIEWED = "Order Completed", "Product Viewed"
AVG_TOTAL = {"type": "avg", "event": ORDER, "property": "total"}


def above(key: str) -> dict[str, Any]:
    """A filter: the order's total is above the profile's value of computed trait `key`."""
    return {"property": "total", "op": "gt", "ref": {"computed": key}}


BIG_SPENDERS = {"event": {"name": ORDER, "where": [above("avg_total")]}}


async def _create_computed(api: Api, key: str, definition: Any, **kw: Any) -> None:
    await api.seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key=key, definition=orjson.dumps(definition)
            ),
            **kw,
        ),
        metadata=api.admin,
    )


async def _preview(api: Api, definition: Any, **kw: Any) -> list[str]:
    reply = await api.seg.Preview(
        segmentation_pb2.PreviewRequest(definition=orjson.dumps(definition), sample_limit=-1, **kw),
        metadata=api.admin,
    )
    return sorted(name_of(r) for r in reply.sample)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def test_orders_above_the_profiles_average_order_value(api) -> None:  # type: ignore[no-untyped-def]
    await api.send(
        [
            {"user_id": "u1", "event": ORDER, "properties": {"total": 10}, "days_ago": 3},
            {"user_id": "u1", "event": ORDER, "properties": {"total": 30}, "days_ago": 2},
            {"user_id": "u1", "event": ORDER, "properties": {"total": 50}, "days_ago": 1},
            {"user_id": "u2", "event": ORDER, "properties": {"total": 20}, "days_ago": 3},
            {"user_id": "u2", "event": ORDER, "properties": {"total": 60}, "days_ago": 1},
            # No numeric total: u3's average is missing and matches no order, even neq.
            {"user_id": "u3", "event": ORDER, "properties": {"total": "12.5"}},
        ]
    )
    await _create_computed(api, "avg_total", AVG_TOTAL)
    await api.computed_live("avg_total")

    # Averages now: u1 30, u2 40; stored values are what Preview reads without as_of.
    assert await _preview(api, BIG_SPENDERS) == ["u1", "u2"]
    off = {"event": {"name": ORDER, "where": [{**above("avg_total"), "op": "neq"}]}}
    assert await _preview(api, off) == ["u1", "u2"]
    # Two days ago the averages were 20 (u1: 10, 30) and 20 (u2: 20): as of then, the
    # referenced values are evaluated then, so only u1's 30 was above its average.
    two_days_ago = timestamp_from_us(api.now_us - 2 * US_PER_DAY)
    assert await _preview(api, BIG_SPENDERS, as_of=two_days_ago) == ["u1"]

    computed = await api.seg.PreviewComputedTrait(
        segmentation_pb2.PreviewComputedTraitRequest(
            definition=orjson.dumps(
                {"type": "event_count", "event": ORDER, "where": [above("avg_total")]}
            ),
            sample_limit=-1,
        ),
        metadata=api.admin,
    )
    assert {name_of(v.profile): orjson.loads(v.value) for v in computed.values} == {
        "u1": 1,
        "u2": 1,
        "u3": 0,
    }

    await api.create("big_spenders", BIG_SPENDERS)
    await api.live("big_spenders")
    assert await api.members("big_spenders") == ["u1", "u2"]
    explained = await _explain(api, "big_spenders", "u1")
    assert explained.member is True
    assert orjson.loads(explained.root.value) == 30
    assert explained.root.summary == (
        "1 Order Completed track events, needs >= 1; compared with computed trait avg_total = 30.0"
    )
    explained = await _explain(api, "big_spenders", "u3")
    assert (explained.member, explained.root.value) == (False, b"")
    assert explained.root.summary.endswith(
        "compared with computed trait avg_total missing (matches no event)"
    )


async def _explain(api: Api, key: str, user: str) -> segmentation_pb2.ExplainMembershipResponse:
    return await api.seg.ExplainMembership(
        segmentation_pb2.ExplainMembershipRequest(
            audience_key=key, identifier=common_pb2.Identifier(type="user_id", value=user)
        ),
        metadata=api.admin,
    )


async def test_a_computed_trait_counts_views_in_the_most_frequent_category(api) -> None:  # type: ignore[no-untyped-def]
    def views(*categories: str) -> list[dict[str, Any]]:
        return [
            {"user_id": "u1", "event": VIEWED, "properties": {"category": c}} for c in categories
        ]

    await api.send(views("shoes", "shoes", "hats"))
    await _create_computed(
        api, "top_category", {"type": "most_frequent", "event": VIEWED, "property": "category"}
    )
    await api.computed_live("top_category")
    # Alphabetically before the trait it reads: a recompute in key order would count
    # views of the previous favourite.
    count = {
        "type": "event_count",
        "event": VIEWED,
        "where": [{"property": "category", "op": "eq", "ref": {"computed": "top_category"}}],
    }
    await _create_computed(api, "count_fav_views", count)
    await api.computed_live("count_fav_views")
    await api.create("fans", {"computed": {"key": "count_fav_views", "op": "gte", "value": 3}})
    await api.live("fans")
    assert await api.members("fans") == []

    await api.send(views("hats", "hats", "hats"))  # hats is the favourite now, 4 views
    result = await api.seg.Recompute(segmentation_pb2.RecomputeRequest(), metadata=api.admin)
    assert list(result.failures) == []
    assert await api.members("fans") == ["u1"]
    explained = await _explain(api, "fans", "u1")
    assert orjson.loads(explained.root.value) == 4


async def test_unknown_and_cyclic_computed_refs_are_refused(api) -> None:  # type: ignore[no-untyped-def]
    error = await _refused(
        _create_computed(
            api, "big", {"type": "event_count", "event": ORDER, "where": [above("nope")]}
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "computed_trait.definition.where[0].ref.computed": (
            "no computed trait 'nope' in this workspace"
        )
    }
    error = await _refused(
        _create_computed(
            api, "me", {"type": "sum", "event": ORDER, "property": "total", "where": [above("me")]}
        )
    )
    assert violations(error) == {
        "computed_trait.definition.where[0].ref.computed": (
            "computed trait reference cycle: me -> me"
        )
    }

    await _create_computed(api, "a", AVG_TOTAL, skip_backfill=True)
    reads_a = {"type": "max", "event": ORDER, "property": "total", "where": [above("a")]}
    await _create_computed(api, "b", reads_a, skip_backfill=True)
    error = await _refused(
        api.seg.UpdateComputedTrait(
            segmentation_pb2.UpdateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(
                    key="a", definition=orjson.dumps({**AVG_TOTAL, "where": [above("b")]})
                )
            ),
            metadata=api.admin,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "computed_trait.definition.where[0].ref.computed": (
            "computed trait reference cycle: a -> b -> a"
        )
    }
    a = await api.seg.GetComputedTrait(
        segmentation_pb2.GetComputedTraitRequest(key="a"), metadata=api.admin
    )
    assert (a.version, orjson.loads(a.definition)) == (1, AVG_TOTAL)

    error = await _refused(
        api.create("x", {"not": {"event": {"name": ORDER, "where": [above("nope")]}}})
    )
    assert violations(error) == {
        "audience.definition.not.event.where[0].ref.computed": (
            "no computed trait 'nope' in this workspace"
        )
    }
    error = await _refused(
        api.seg.PreviewComputedTrait(
            segmentation_pb2.PreviewComputedTraitRequest(
                definition=orjson.dumps({**AVG_TOTAL, "where": [above("nope")]})
            ),
            metadata=api.admin,
        )
    )
    assert violations(error) == {
        "definition.where[0].ref.computed": "no computed trait 'nope' in this workspace"
    }

    # A computed trait that others read stays until they stop reading it.
    error = await _refused(
        api.seg.DeleteComputedTrait(
            segmentation_pb2.DeleteComputedTraitRequest(key="a"), metadata=api.admin
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "computed trait 'a' is used by computed traits b"
    await api.create(
        "funnel",
        {
            "funnel": {
                "steps": [{"name": VIEWED}, {"name": ORDER, "where": [above("b")]}],
                "within_seconds": 60,
            }
        },
        skip_backfill=True,
    )
    error = await _refused(
        api.seg.DeleteComputedTrait(
            segmentation_pb2.DeleteComputedTraitRequest(key="b"), metadata=api.admin
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "computed trait 'b' is used by audiences funnel"
