"""No SegmentationService RPC lets one workspace's key read or change another
workspace's audiences, computed traits, members or change log: workspace B's admin key,
aimed at workspace A's keys and people, gets exactly what it gets for keys and people
that exist nowhere (NOT_FOUND, or the same INVALID_ARGUMENT), its listings and previews
hold only its own, and A's data is unchanged afterwards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, segmentation_pb2

from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer
from tests.integration.segmentation.apisupport import Api, name_of

pytestmark = pytest.mark.integration

ORDER = "Order Completed"
BUYERS = {"event": {"name": ORDER}}
ORDERS = {"type": "event_count", "event": ORDER}
NOWHERE = "nowhere"  # a key no workspace has


def _ada() -> common_pb2.Identifier:
    return common_pb2.Identifier(type="user_id", value="ada")


async def _snapshot(api: Api) -> dict[str, Any]:
    """Everything of A's that B might read or change, as A sees it."""
    audience = await api.seg.GetAudience(
        segmentation_pb2.GetAudienceRequest(key="buyers"), metadata=api.admin
    )
    computed = await api.seg.GetComputedTrait(
        segmentation_pb2.GetComputedTraitRequest(key="orders"), metadata=api.admin
    )
    history = await api.seg.GetMembershipHistory(
        segmentation_pb2.GetMembershipHistoryRequest(audience_key="buyers", identifier=_ada()),
        metadata=api.admin,
    )
    return {
        "audience": (audience.name, audience.version, audience.size, audience.definition),
        "computed": (computed.name, computed.version, computed.definition),
        "members": sorted(await api.members("buyers")),
        "history": [(c.seq, c.kind) for c in history.changes],
        "changes": [(c.seq, c.audience_key, name_of(c.profile)) for c in await api.changes()],
    }


async def _status(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, str] | None:
    """The status code and details a call ends with (None when it succeeds)."""
    try:
        reply = call()
        if hasattr(reply, "read"):  # a server stream: its first message or its status
            await reply.read()
            reply.cancel()
        else:
            await reply
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return None


async def test_no_segmentation_rpc_crosses_workspaces(api: Api, resources) -> None:  # type: ignore[no-untyped-def]
    # Workspace A: two buyers, an audience of them and a computed trait.
    await api.send([{"user_id": "ada", "event": ORDER}, {"user_id": "bob", "event": ORDER}])
    await api.create("buyers", BUYERS)
    await api.live("buyers")
    await api.seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key="orders", definition=orjson.dumps(ORDERS)
            )
        ),
        metadata=api.admin,
    )
    await api.computed_live("orders")
    before = await _snapshot(api)
    assert before["members"] == ["ada", "bob"]

    # Workspace B: one buyer of its own, through its own keys.
    other = await make_workspace(resources, "globex")
    b = Api(api.ingest, api.seg, bearer(other.admin), bearer(other.ingest), api.now_us)
    await b.send([{"user_id": "carol", "event": ORDER}])
    seg = b.seg

    def as_b(method: Callable[..., Any], request: Any) -> Callable[[], Any]:
        # A deadline, so a stream that wrongly opened cannot hang the test.
        return lambda: method(request, metadata=b.admin, timeout=10)

    def by_key(make: Callable[[str], tuple[Callable[..., Any], Any]]) -> dict[str, Any]:
        """A call of B's aimed at A's object, and the same call at a key of nobody's."""
        return {key: as_b(*make(key)) for key in ("buyers", NOWHERE)}

    aimed_at_a: dict[str, dict[str, Any]] = {
        "GetAudience": by_key(
            lambda k: (seg.GetAudience, segmentation_pb2.GetAudienceRequest(key=k))
        ),
        "UpdateAudience": by_key(
            lambda k: (
                seg.UpdateAudience,
                segmentation_pb2.UpdateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key=k, name="hijacked", definition=orjson.dumps({"not": BUYERS})
                    )
                ),
            )
        ),
        "DeleteAudience": by_key(
            lambda k: (seg.DeleteAudience, segmentation_pb2.DeleteAudienceRequest(key=k))
        ),
        "GetComputedTrait": by_key(
            lambda k: (
                seg.GetComputedTrait,
                segmentation_pb2.GetComputedTraitRequest(key="orders" if k == "buyers" else k),
            )
        ),
        "UpdateComputedTrait": by_key(
            lambda k: (
                seg.UpdateComputedTrait,
                segmentation_pb2.UpdateComputedTraitRequest(
                    computed_trait=segmentation_pb2.ComputedTrait(
                        key="orders" if k == "buyers" else k, name="hijacked"
                    )
                ),
            )
        ),
        "DeleteComputedTrait": by_key(
            lambda k: (
                seg.DeleteComputedTrait,
                segmentation_pb2.DeleteComputedTraitRequest(key="orders" if k == "buyers" else k),
            )
        ),
        "CreateAudience (referring to A's audience)": by_key(
            lambda k: (
                seg.CreateAudience,
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key="mine", definition=orjson.dumps({"audience": {"key": k}})
                    )
                ),
            )
        ),
        "CreateAudience (reading A's computed trait)": by_key(
            lambda k: (
                seg.CreateAudience,
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key="mine",
                        definition=orjson.dumps(
                            {
                                "computed": {
                                    "key": "orders" if k == "buyers" else k,
                                    "op": "gte",
                                    "value": 1,
                                }
                            }
                        ),
                    )
                ),
            )
        ),
        "Preview (an edit of A's audience)": by_key(
            lambda k: (
                seg.Preview,
                segmentation_pb2.PreviewRequest(
                    definition=orjson.dumps({"not": BUYERS}), audience_key=k
                ),
            )
        ),
        "ListMembers": by_key(
            lambda k: (seg.ListMembers, segmentation_pb2.ListMembersRequest(audience_key=k))
        ),
        "Recompute": by_key(
            lambda k: (seg.Recompute, segmentation_pb2.RecomputeRequest(audience_key=k))
        ),
        "ExplainMembership": by_key(
            lambda k: (
                seg.ExplainMembership,
                segmentation_pb2.ExplainMembershipRequest(audience_key=k, identifier=_ada()),
            )
        ),
        "GetMembershipHistory": by_key(
            lambda k: (
                seg.GetMembershipHistory,
                segmentation_pb2.GetMembershipHistoryRequest(audience_key=k, identifier=_ada()),
            )
        ),
        "WatchChanges": by_key(
            lambda k: (seg.WatchChanges, segmentation_pb2.WatchChangesRequest(audience_keys=[k]))
        ),
    }
    answers: dict[str, dict[str, tuple[grpc.StatusCode, str] | None]] = {
        rpc: {key: await _status(call) for key, call in calls.items()}
        for rpc, calls in aimed_at_a.items()
    }
    for rpc, by_target in answers.items():
        at_a, at_nowhere = by_target["buyers"], by_target[NOWHERE]
        assert at_a is not None, f"{rpc} succeeded on workspace A's object"
        # Indistinguishable from a key nobody has: the answer reveals nothing of A.
        named = at_a[1].replace("'buyers'", f"'{NOWHERE}'").replace("'orders'", f"'{NOWHERE}'")
        assert (at_a[0], named) == at_nowhere, rpc
        expected = (
            grpc.StatusCode.INVALID_ARGUMENT
            if rpc.startswith("CreateAudience") or rpc == "WatchChanges"
            else grpc.StatusCode.NOT_FOUND
        )
        assert at_a[0] == expected, (rpc, at_a)

    # B's listings, previews and change log hold only B's own.
    listed = await seg.ListAudiences(segmentation_pb2.ListAudiencesRequest(), metadata=b.admin)
    assert list(listed.audiences) == []
    listed_computed = await seg.ListComputedTraits(
        segmentation_pb2.ListComputedTraitsRequest(), metadata=b.admin
    )
    assert list(listed_computed.computed_traits) == []
    preview = await seg.Preview(
        segmentation_pb2.PreviewRequest(definition=orjson.dumps(BUYERS), sample_limit=-1),
        metadata=b.admin,
    )
    assert (preview.size, [name_of(r) for r in preview.sample]) == (1, ["carol"])
    computed_preview = await seg.PreviewComputedTrait(
        segmentation_pb2.PreviewComputedTraitRequest(
            definition=orjson.dumps(ORDERS), sample_limit=-1
        ),
        metadata=b.admin,
    )
    assert [(name_of(v.profile), orjson.loads(v.value)) for v in computed_preview.values] == [
        ("carol", 1)
    ]
    recomputed = await seg.Recompute(segmentation_pb2.RecomputeRequest(), metadata=b.admin)
    assert (recomputed.entered, recomputed.exited) == (0, 0)
    # B's own audience of the same key is its own object, with B's people only.
    await b.create("buyers", BUYERS)
    await b.live("buyers")
    assert await b.members("buyers") == ["carol"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await seg.ExplainMembership(
            segmentation_pb2.ExplainMembershipRequest(audience_key="buyers", identifier=_ada()),
            metadata=b.admin,
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND  # ada is a person of A's only
    assert [(c.audience_key, name_of(c.profile)) for c in await b.changes()] == [
        ("buyers", "carol")
    ]

    # A's data is as it was.
    assert await _snapshot(api) == before
