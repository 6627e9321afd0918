"""Destinations CRUD through the real gRPC API on real Postgres: secrets encrypted at
rest and never returned, bad input named field by field."""

from __future__ import annotations

import logging

import grpc
import pytest
from audiences.v1 import sync_pb2
from sqlalchemy import select

from services.shared.errors import field_violations
from services.sync.tables import sync_destinations
from tests.integration.sync.conftest import SyncApi

pytestmark = pytest.mark.integration

SECRET = "whsec-very-secret-value-123"


def _webhook(**overrides: object) -> sync_pb2.Destination:
    fields: dict[str, object] = {
        "name": "crm hook",
        "kind": sync_pb2.DESTINATION_KIND_WEBHOOK,
        "base_url": "http://127.0.0.1:9/hook",
        "secret": SECRET,
        "batch_size": 50,
    }
    fields.update(overrides)
    return sync_pb2.Destination(**fields)  # type: ignore[arg-type]


async def test_secret_is_encrypted_at_rest_and_never_returned_or_logged(
    api: SyncApi,
    resources,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(destination=_webhook()), metadata=api.metadata
    )
    assert created.has_secret and created.secret == ""
    assert created.batch_size == 50 and created.timeout_seconds == 10
    got = await api.stub.GetDestination(
        sync_pb2.GetDestinationRequest(id=created.id), metadata=api.metadata
    )
    assert got.has_secret and got.secret == "" and got.base_url == "http://127.0.0.1:9/hook"
    listed = await api.stub.ListDestinations(
        sync_pb2.ListDestinationsRequest(), metadata=api.metadata
    )
    assert [d.secret for d in listed.destinations] == [""]
    async with resources.engine.connect() as c:
        stored = (await c.execute(select(sync_destinations.c.secret_ciphertext))).scalar_one()
    assert SECRET not in stored and len(stored) > len(SECRET)
    assert SECRET not in caplog.text


async def test_update_keeps_the_secret_unless_given_and_delete_removes(api: SyncApi) -> None:
    created = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(destination=_webhook()), metadata=api.metadata
    )
    changed = _webhook(id=created.id, name="renamed", secret="", base_url="https://example.org/h")
    updated = await api.stub.UpdateDestination(
        sync_pb2.UpdateDestinationRequest(destination=changed), metadata=api.metadata
    )
    assert (updated.name, updated.base_url, updated.has_secret) == (
        "renamed",
        "https://example.org/h",
        True,
    )
    await api.stub.DeleteDestination(
        sync_pb2.DeleteDestinationRequest(id=created.id), metadata=api.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await api.stub.GetDestination(
            sync_pb2.GetDestinationRequest(id=created.id), metadata=api.metadata
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages_through_every_destination(api: SyncApi) -> None:
    made = []
    for i in range(5):
        d = await api.stub.CreateDestination(
            sync_pb2.CreateDestinationRequest(destination=_webhook(name=f"hook {i}")),
            metadata=api.metadata,
        )
        made.append(d.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await api.stub.ListDestinations(
            sync_pb2.ListDestinationsRequest(page_size=2, page_token=token), metadata=api.metadata
        )
        seen.extend(d.id for d in page.destinations)
        token = page.next_page_token
        if not token:
            break
    assert seen == made


@pytest.mark.parametrize(
    ("destination", "field"),
    [
        (_webhook(name=""), "destination.name"),
        (_webhook(base_url="ftp://x"), "destination.base_url"),
        (_webhook(secret=""), "destination.secret"),
        (_webhook(batch_size=100_000), "destination.batch_size"),
        (_webhook(kind=sync_pb2.DESTINATION_KIND_UNSPECIFIED), "destination.kind"),
        (
            sync_pb2.Destination(
                name="f", kind=sync_pb2.DESTINATION_KIND_FILE, directory="rel", file_format="csv"
            ),
            "destination.directory",
        ),
        (
            sync_pb2.Destination(
                name="f", kind=sync_pb2.DESTINATION_KIND_FILE, directory="/tmp", file_format="xml"
            ),
            "destination.file_format",
        ),
    ],
)
async def test_bad_destinations_are_refused_field_by_field(
    api: SyncApi, destination: sync_pb2.Destination, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.CreateDestination(
            sync_pb2.CreateDestinationRequest(destination=destination), metadata=api.metadata
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(refused.value)]
    listed = await api.stub.ListDestinations(
        sync_pb2.ListDestinationsRequest(), metadata=api.metadata
    )
    assert list(listed.destinations) == []
