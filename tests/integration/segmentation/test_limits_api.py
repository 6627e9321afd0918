"""Definition limits and failure isolation through the real gRPC API on Postgres and
Redis: every limit refuses at the exact field path and saves nothing; definitions right
at the limits are accepted and evaluate; prediction nodes must name a scored
prediction; one audience or computed trait that fails at evaluation is reported with
its reason while the rest of the workspace is recomputed."""

from __future__ import annotations

import json
from typing import Any

import grpc
import orjson
import pytest
import sqlalchemy as sa
from audiences.v1 import segmentation_pb2

from services.segmentation.definitions import field_path
from services.segmentation.tables import (
    audience_versions,
    audiences,
    computed_traits,
    prediction_scores,
)
from tests.integration.segmentation.apisupport import Api, violations
from tests.unit.segmentation.limit_cases import (
    AUDIENCE_CASES,
    COMPUTED_CASES,
    LimitCase,
    nots,
)

pytestmark = pytest.mark.integration

ORDER = "Order Completed"
FAILED = segmentation_pb2.AUDIENCE_STATE_FAILED
LIVE = segmentation_pb2.AUDIENCE_STATE_LIVE


async def _audience_keys(api: Api) -> list[str]:
    listed = await api.seg.ListAudiences(
        segmentation_pb2.ListAudiencesRequest(), metadata=api.admin
    )
    return [a.key for a in listed.audiences]


async def _get(api: Api, key: str) -> segmentation_pb2.Audience:
    return await api.seg.GetAudience(
        segmentation_pb2.GetAudienceRequest(key=key), metadata=api.admin
    )


async def _recompute(api: Api, key: str = "") -> segmentation_pb2.RecomputeResponse:
    return await api.seg.Recompute(
        segmentation_pb2.RecomputeRequest(audience_key=key), metadata=api.admin
    )


def _encode(definition: Any) -> bytes:
    # The standard library's encoder: orjson stops at 254 levels, and some cases nest
    # deeper on purpose.
    return json.dumps(definition).encode()


async def _create(api: Api, key: str, definition: Any) -> segmentation_pb2.Audience:
    return await api.seg.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(key=key, definition=_encode(definition))
        ),
        metadata=api.admin,
    )


def _failures(result: segmentation_pb2.RecomputeResponse) -> dict[tuple[str, str], str]:
    return {(f.kind, f.key): f.reason for f in result.failures}


async def _refused(call: Any, field: str, case: LimitCase) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    path, reason = case.violation
    assert violations(error.value) == {field_path(field, path): reason}


@pytest.mark.parametrize("case", AUDIENCE_CASES, ids=lambda c: c.name)
async def test_create_past_a_limit_is_refused_and_saves_nothing(api, case: LimitCase) -> None:  # type: ignore[no-untyped-def]
    await _refused(_create(api, "too_big", case.over_limit), "audience.definition", case)
    assert await _audience_keys(api) == []
    assert await api.changes() == []


@pytest.mark.parametrize("case", COMPUTED_CASES, ids=lambda c: c.name)
async def test_computed_trait_past_a_limit_is_refused_and_saves_nothing(  # type: ignore[no-untyped-def]
    api, case: LimitCase
) -> None:
    call = api.seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key="too_big", definition=_encode(case.over_limit)
            )
        ),
        metadata=api.admin,
    )
    await _refused(call, "computed_trait.definition", case)
    listed = await api.seg.ListComputedTraits(
        segmentation_pb2.ListComputedTraitsRequest(), metadata=api.admin
    )
    assert list(listed.computed_traits) == []


async def test_update_and_preview_past_a_limit_are_refused(api) -> None:  # type: ignore[no-untyped-def]
    await api.create("orders", {"event": {"name": ORDER}}, skip_backfill=True)
    case = next(c for c in AUDIENCE_CASES if c.name == "within_days (10^9)")
    update = api.seg.UpdateAudience(
        segmentation_pb2.UpdateAudienceRequest(
            audience=segmentation_pb2.Audience(
                key="orders", definition=orjson.dumps(case.over_limit)
            )
        ),
        metadata=api.admin,
    )
    await _refused(update, "audience.definition", case)
    kept = await _get(api, "orders")
    assert kept.version == 1 and orjson.loads(kept.definition) == {"event": {"name": ORDER}}
    preview = api.seg.Preview(
        segmentation_pb2.PreviewRequest(definition=orjson.dumps(case.over_limit)),
        metadata=api.admin,
    )
    await _refused(preview, "definition", case)


async def test_deep_json_text_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="deep", definition=b'{"not":' * 5_000 + b"{}" + b"}" * 5_000
                )
            ),
            metadata=api.admin,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error.value) == {"audience.definition": "nests too deeply"}
    assert await _audience_keys(api) == []


async def test_definitions_at_the_limits_are_accepted_and_evaluate(api) -> None:  # type: ignore[no-untyped-def]
    await api.send([{"user_id": "u1", "event": ORDER, "properties": {"price": 5}}])
    keys = []
    for i, case in enumerate(AUDIENCE_CASES):
        created = await api.create(f"at_limit_{i}", case.at_limit, skip_backfill=True)
        assert orjson.loads(created.definition) == case.at_limit
        keys.append(created.key)
    assert sorted(await _audience_keys(api)) == sorted(keys)
    result = await _recompute(api)
    assert list(result.failures) == []
    assert result.audiences == len(keys)
    for key in keys:
        assert (await _get(api, key)).state == LIVE


async def test_prediction_must_name_a_scored_prediction(api, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    await api.send([{"type": "identify", "user_id": "u1", "traits": {"plan": "pro"}}])
    churn = {"prediction": {"key": "churn", "percentile": {"gte": 90}}}
    definition = {"all": [{"trait": {"name": "plan", "op": "eq", "value": "pro"}}, churn]}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.create("likely_churn", definition)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error.value) == {
        "audience.definition.all[1].prediction.key": (
            "no prediction 'churn' in this workspace (a prediction exists once it has scores)"
        )
    }
    assert await _audience_keys(api) == []
    # Once the prediction has scores, the same definition is accepted and evaluated.
    await api.create("pro", definition["all"][0])
    await api.live("pro")
    (member,) = (
        await api.seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key="pro"), metadata=api.admin
        )
    ).members
    async with resources.engine.begin() as c:
        await c.execute(
            sa.insert(prediction_scores).values(
                workspace_id=workspace.workspace_id,
                key="churn",
                profile_id=int(member.profile.profile_id),
                probability=0.8,
                percentile=95.0,
                scored_at_us=api.now_us,
            )
        )
    await api.create("likely_churn", definition)
    await api.live("likely_churn")
    assert await api.members("likely_churn") == ["u1"]


async def _corrupt_audience(resources, workspace, key: str, definition: Any) -> Any:  # type: ignore[no-untyped-def]
    """Overwrite an audience's stored definition behind the API; returns the old one."""
    async with resources.engine.begin() as c:
        audience_id = (
            await c.execute(
                sa.select(audiences.c.audience_id).where(
                    audiences.c.workspace_id == workspace.workspace_id, audiences.c.key == key
                )
            )
        ).scalar_one()
        old = (
            await c.execute(
                sa.select(audience_versions.c.definition).where(
                    audience_versions.c.audience_id == audience_id
                )
            )
        ).scalar_one()
        await c.execute(
            sa.update(audience_versions)
            .where(audience_versions.c.audience_id == audience_id)
            .values(definition=definition)
        )
    return old


async def test_one_failing_audience_does_not_stop_the_others(api, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    await api.send([{"user_id": u, "event": ORDER} for u in ("u1", "u2", "u2")])
    await api.create("buyers", {"event": {"name": ORDER}}, skip_backfill=True)
    repeat = {"event": {"name": ORDER, "count": {"op": "gte", "value": 2}}}
    await api.create("repeat", repeat, skip_backfill=True)
    await api.create("not_repeat", {"not": {"audience": {"key": "repeat"}}}, skip_backfill=True)
    await api.create("big", {"event": {"name": ORDER, "count": {"op": "gte", "value": 1}}})
    first = await _recompute(api)
    assert list(first.failures) == []
    assert await api.members("repeat") == ["u2"]
    assert await api.members("not_repeat") == ["u1"]

    # A definition the evaluator cannot handle, as an older release might have stored.
    await _corrupt_audience(resources, workspace, "repeat", {"bogus": {"deep": True}})
    await api.send([{"user_id": "u3", "event": ORDER}])
    result = await _recompute(api)
    assert _failures(result) == {
        ("audience", "repeat"): "DefinitionError: bogus: unknown node type",
        ("audience", "not_repeat"): (
            "not recomputed: it references audience 'repeat', which failed"
        ),
    }
    assert result.audiences == 2  # buyers and big
    assert sorted(await api.members("buyers")) == ["u1", "u2", "u3"]
    assert sorted(await api.members("big")) == ["u1", "u2", "u3"]
    broken = await _get(api, "repeat")
    assert broken.state == FAILED
    assert broken.failure_reason == "DefinitionError: bogus: unknown node type"
    assert await api.members("repeat") == ["u2"]  # the last good members stay
    assert (await _get(api, "not_repeat")).state == LIVE
    assert await api.members("not_repeat") == ["u1"]
    assert sorted(await _audience_keys(api)) == ["big", "buyers", "not_repeat", "repeat"]
    # Recomputing the broken audience alone reports it the same way.
    alone = await _recompute(api, "repeat")
    assert _failures(alone) == {("audience", "repeat"): "DefinitionError: bogus: unknown node type"}
    assert alone.audiences == 0

    # Repaired, it recomputes and its reason is cleared.
    await _corrupt_audience(resources, workspace, "repeat", repeat)
    healed = await _recompute(api)
    assert list(healed.failures) == []
    assert healed.audiences == 4
    repaired = await _get(api, "repeat")
    assert (repaired.state, repaired.failure_reason) == (LIVE, "")
    assert sorted(await api.members("not_repeat")) == ["u1", "u3"]


async def test_one_failing_computed_trait_does_not_stop_the_others(  # type: ignore[no-untyped-def]
    api, resources, workspace
) -> None:
    await api.send([{"user_id": "u1", "event": ORDER, "properties": {"revenue": 30}}])
    for key, definition in {
        "orders": {"type": "event_count", "event": ORDER},
        "revenue": {"type": "sum", "event": ORDER, "property": "revenue"},
    }.items():
        await api.seg.CreateComputedTrait(
            segmentation_pb2.CreateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(
                    key=key, definition=orjson.dumps(definition)
                ),
                skip_backfill=True,
            ),
            metadata=api.admin,
        )
    await api.create(
        "spenders", {"computed": {"key": "revenue", "op": "gte", "value": 10}}, skip_backfill=True
    )
    await api.create(
        "ordered", {"computed": {"key": "orders", "op": "gte", "value": 1}}, skip_backfill=True
    )
    async with resources.engine.begin() as c:
        await c.execute(
            sa.update(computed_traits)
            .where(
                computed_traits.c.workspace_id == workspace.workspace_id,
                computed_traits.c.key == "revenue",
            )
            .values(definition={"type": "median", "event": ORDER})
        )
    result = await _recompute(api)
    failures = _failures(result)
    assert failures[("computed_trait", "revenue")].startswith("DefinitionError: ")
    assert failures[("audience", "spenders")] == (
        "not recomputed: it references computed trait 'revenue', which failed"
    )
    assert len(failures) == 2
    assert result.audiences == 1
    assert await api.members("ordered") == ["u1"]
    trait = await api.seg.GetComputedTrait(
        segmentation_pb2.GetComputedTraitRequest(key="revenue"), metadata=api.admin
    )
    assert trait.state == FAILED
    assert trait.failure_reason == failures[("computed_trait", "revenue")]


async def test_a_deep_definition_stored_before_the_limits_breaks_nothing_else(  # type: ignore[no-untyped-def]
    api, resources, workspace
) -> None:
    await api.send([{"user_id": "u1", "event": ORDER}])
    await api.create("buyers", {"event": {"name": ORDER}}, skip_backfill=True)
    await api.create("legacy", {"event": {"name": ORDER}}, skip_backfill=True)
    deep = nots(500, {"event": {"name": ORDER}})
    await _corrupt_audience(resources, workspace, "legacy", deep)
    assert sorted(await _audience_keys(api)) == ["buyers", "legacy"]
    assert json.loads((await _get(api, "legacy")).definition) == deep
    result = await _recompute(api)
    (failure,) = result.failures
    assert (failure.kind, failure.key) == ("audience", "legacy")
    assert failure.reason.endswith("nests deeper than 64 levels")
    assert result.audiences == 1
    assert await api.members("buyers") == ["u1"]
    await api.seg.DeleteAudience(
        segmentation_pb2.DeleteAudienceRequest(key="legacy"), metadata=api.admin
    )
    assert await _audience_keys(api) == ["buyers"]
