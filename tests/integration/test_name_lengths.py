"""Every name that goes into a bounded column, sent one character too long through the
gRPC API, is refused with the field that is too long (INVALID_ARGUMENT for an RPC, a
rejected event naming the field for ingest, whose bad events never fail a request),
never a database error, and nothing is stored."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)
from sqlalchemy import func, select

from services.shared.db.tables import api_keys, events, identities, workspaces
from services.shared.errors import field_violations
from services.shared.server import Resources
from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration

OPERATOR_TOKEN = "operator-" + "o" * 40
LONG = "x" * 256  # every bounded name column holds 255 characters
AUDIENCE = orjson.dumps({"event": {"name": "Signed Up"}})
COMPUTED = orjson.dumps({"type": "event_count", "event": "Signed Up"})


@dataclasses.dataclass
class Api:
    admin: admin_pb2_grpc.AdminServiceStub
    ingest: ingest_pb2_grpc.IngestServiceStub
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub
    resources: Resources


@pytest.fixture
async def api(settings, clock):  # type: ignore[no-untyped-def]
    opened = await Resources.open(
        dataclasses.replace(settings, operator_token=OPERATOR_TOKEN), "test", clock=clock
    )
    async with in_process(opened, ["ingest", "segmentation"]) as addresses:
        async with (
            grpc.aio.insecure_channel(addresses["ingest"]) as ingest,
            grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation,
        ):
            yield Api(
                admin_pb2_grpc.AdminServiceStub(ingest),
                ingest_pb2_grpc.IngestServiceStub(ingest),
                segmentation_pb2_grpc.SegmentationServiceStub(segmentation),
                opened,
            )
    await opened.close()


# (what is too long, the call given the API and workspace keys, the field named)
RpcCase = tuple[str, Callable[[Api, Any], Any], str]
RPC_CASES: list[RpcCase] = [
    (
        "workspace name",
        lambda api, ws: api.admin.CreateWorkspace(
            admin_pb2.CreateWorkspaceRequest(name=LONG), metadata=bearer(OPERATOR_TOKEN)
        ),
        "name",
    ),
    (
        "API key name",
        lambda api, ws: api.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(name=LONG, scopes=["admin"]), metadata=bearer(ws.admin)
        ),
        "name",
    ),
    (
        "audience key",
        lambda api, ws: api.segmentation.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(key="a" * 256, definition=AUDIENCE)
            ),
            metadata=bearer(ws.admin),
        ),
        "audience.key",
    ),
    (
        "audience name (create)",
        lambda api, ws: api.segmentation.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(key="fresh", name=LONG, definition=AUDIENCE)
            ),
            metadata=bearer(ws.admin),
        ),
        "audience.name",
    ),
    (
        "audience name (update)",
        lambda api, ws: api.segmentation.UpdateAudience(
            segmentation_pb2.UpdateAudienceRequest(
                audience=segmentation_pb2.Audience(key="signed_up", name=LONG)
            ),
            metadata=bearer(ws.admin),
        ),
        "audience.name",
    ),
    (
        "computed trait key",
        lambda api, ws: api.segmentation.CreateComputedTrait(
            segmentation_pb2.CreateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(key="c" * 256, definition=COMPUTED)
            ),
            metadata=bearer(ws.admin),
        ),
        "computed_trait.key",
    ),
    (
        "computed trait name (create)",
        lambda api, ws: api.segmentation.CreateComputedTrait(
            segmentation_pb2.CreateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(
                    key="fresh", name=LONG, definition=COMPUTED
                )
            ),
            metadata=bearer(ws.admin),
        ),
        "computed_trait.name",
    ),
    (
        "computed trait name (update)",
        lambda api, ws: api.segmentation.UpdateComputedTrait(
            segmentation_pb2.UpdateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(key="signups", name=LONG)
            ),
            metadata=bearer(ws.admin),
        ),
        "computed_trait.name",
    ),
]


async def _counts(resources: Resources) -> tuple[int, ...]:
    async with resources.engine.connect() as connection:
        return tuple(
            [
                (await connection.execute(select(func.count()).select_from(table))).scalar_one()
                for table in (workspaces, api_keys, events, identities)
            ]
        )


async def _definitions(api: Api, ws: Any) -> tuple[list[tuple[str, str]], ...]:
    audiences = await api.segmentation.ListAudiences(
        segmentation_pb2.ListAudiencesRequest(), metadata=bearer(ws.admin)
    )
    computed = await api.segmentation.ListComputedTraits(
        segmentation_pb2.ListComputedTraitsRequest(), metadata=bearer(ws.admin)
    )
    return (
        [(a.key, a.name) for a in audiences.audiences],
        [(c.key, c.name) for c in computed.computed_traits],
    )


async def test_too_long_names_are_invalid_argument_naming_the_field(api: Api) -> None:
    ws = await make_workspace(api.resources, "acme")
    await api.segmentation.CreateAudience(
        segmentation_pb2.CreateAudienceRequest(
            audience=segmentation_pb2.Audience(key="signed_up", definition=AUDIENCE),
            skip_backfill=True,
        ),
        metadata=bearer(ws.admin),
    )
    await api.segmentation.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(key="signups", definition=COMPUTED),
            skip_backfill=True,
        ),
        metadata=bearer(ws.admin),
    )
    counts, definitions = await _counts(api.resources), await _definitions(api, ws)
    refused = []
    for what, call, _ in RPC_CASES:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(api, ws)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        refused.append((what, [v.field for v in field_violations(error.value)]))
    assert refused == [(what, [field]) for what, _, field in RPC_CASES]
    assert await _counts(api.resources) == counts
    assert await _definitions(api, ws) == definitions


def _event(**fields: Any) -> ingest_pb2.Event:
    return ingest_pb2.Event(**{"user_id": "ada", **fields})


# (what is too long, the event, its type, the field named)
EVENT_CASES: list[tuple[str, ingest_pb2.Event, int, str]] = [
    ("message id", _event(message_id=LONG), ingest_pb2.EVENT_TYPE_TRACK, "message_id"),
    ("user id", _event(user_id=LONG), ingest_pb2.EVENT_TYPE_IDENTIFY, "user_id"),
    ("anonymous id", _event(anonymous_id=LONG), ingest_pb2.EVENT_TYPE_IDENTIFY, "anonymous_id"),
    ("event name", _event(event=LONG), ingest_pb2.EVENT_TYPE_TRACK, "event"),
    ("page name", _event(name=LONG), ingest_pb2.EVENT_TYPE_PAGE, "name"),
    ("group id", _event(group_id=LONG), ingest_pb2.EVENT_TYPE_GROUP, "group_id"),
    ("previous id", _event(previous_id=LONG), ingest_pb2.EVENT_TYPE_ALIAS, "previous_id"),
    (
        "identifier type",
        _event(external_ids=[common_pb2.Identifier(type="t" * 65, value="v")]),
        ingest_pb2.EVENT_TYPE_IDENTIFY,
        "external_ids[0].type",
    ),
    (
        "identifier value",
        _event(external_ids=[common_pb2.Identifier(type="crm_id", value=LONG)]),
        ingest_pb2.EVENT_TYPE_IDENTIFY,
        "external_ids[0]",
    ),
    (
        "email",
        _event(traits=orjson.dumps({"email": LONG + "@example.com"})),
        ingest_pb2.EVENT_TYPE_IDENTIFY,
        "traits.email",
    ),
    (
        "device id",
        _event(context=orjson.dumps({"device": {"id": LONG}})),
        ingest_pb2.EVENT_TYPE_TRACK,
        "context.device.id",
    ),
    (
        "trait name",
        _event(traits=orjson.dumps({LONG: 1})),
        ingest_pb2.EVENT_TYPE_IDENTIFY,
        "traits",
    ),
    (
        "trait name in context.traits",
        _event(context=orjson.dumps({"traits": {LONG: 1}})),
        ingest_pb2.EVENT_TYPE_IDENTIFY,
        "context.traits",
    ),
]


async def test_too_long_event_names_are_rejected_naming_the_field(api: Api) -> None:
    ws = await make_workspace(api.resources, "acme")
    counts = await _counts(api.resources)
    batch = [
        ingest_pb2.Event(
            **{
                **{f.name: v for f, v in event.ListFields()},
                "type": kind,
                "message_id": event.message_id or f"m{n}",
                "event": event.event
                or ("Signed Up" if kind == ingest_pb2.EVENT_TYPE_TRACK else ""),
                "user_id": "ada" if kind == ingest_pb2.EVENT_TYPE_ALIAS else event.user_id,
                "previous_id": event.previous_id
                or ("old" if kind == ingest_pb2.EVENT_TYPE_ALIAS else ""),
                "group_id": event.group_id or ("g1" if kind == ingest_pb2.EVENT_TYPE_GROUP else ""),
            }
        )
        for n, (_, event, kind, _) in enumerate(EVENT_CASES)
    ]
    reply = await api.ingest.Batch(
        ingest_pb2.BatchRequest(events=batch), metadata=bearer(ws.ingest)
    )
    assert reply.rejected == len(EVENT_CASES)
    found = [
        (what, [v.field for v in result.violations])
        for (what, *_), result in zip(EVENT_CASES, reply.results, strict=True)
    ]
    assert found == [
        (what, [f"events[{n}].{field}"]) for n, (what, _, _, field) in enumerate(EVENT_CASES)
    ]
    assert await _counts(api.resources) == counts
