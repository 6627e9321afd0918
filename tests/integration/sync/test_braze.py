"""A Braze-style fake server receives exactly the documented /users/track shapes."""

from __future__ import annotations

import grpc
import pytest
from audiences.v1 import sync_pb2

from services.shared.errors import field_violations
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import audience_sync, run
from tests.integration.sync.support import vendor

pytestmark = pytest.mark.integration

REST_KEY = "braze-rest-key-123"


def _ok(path: str, body: object) -> tuple[int, object]:
    return 201, {"message": "success", "attributes_processed": len(body["attributes"])}  # type: ignore[index]


async def _braze_sync(
    api: SyncApi, url: str, id_type: str, options: dict[str, str]
) -> sync_pb2.Sync:
    destination = await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="braze",
                kind=sync_pb2.DESTINATION_KIND_BRAZE,
                base_url=url,
                secret=REST_KEY,
                options=options,
            )
        ),
        metadata=api.metadata,
    )
    # These tests remove on purpose: no guardrail.
    return await audience_sync(api, destination.id, "fans", id_type, max_removal_fraction=1)


async def test_boolean_membership_by_external_id_in_requests_of_at_most_75(
    api: SyncApi,
) -> None:
    audience = await api.log.audience("fans")
    pids = [await api.log.profile(user_id=f"u{i:03}") for i in range(80)]
    for pid in pids:
        await api.log.change(audience, pid, entered=True)
    async with vendor(_ok) as braze:
        sync = await _braze_sync(api, braze.url, "user_id", {})
        first = await run(api, sync.id)
        assert (first.status, first.added) == ("succeeded", 80)
        await api.log.change(audience, pids[0], entered=False)
        assert (await run(api, sync.id)).removed == 1
    sizes = [len(body["attributes"]) for _, _, body in braze.requests]
    assert sizes == [75, 5, 1]
    for path, headers, _ in braze.requests:
        assert path == "/users/track"
        assert headers["Authorization"] == f"Bearer {REST_KEY}"
    assert braze.requests[0][2]["attributes"][0] == {
        "external_id": "u000",
        "audience_fans": True,
        "_update_existing_only": True,
    }
    assert braze.requests[-1][2]["attributes"] == [
        {"external_id": "u000", "audience_fans": False, "_update_existing_only": True}
    ]


async def test_array_membership_by_user_alias(api: SyncApi) -> None:
    audience = await api.log.audience("fans")
    pid = await api.log.profile(device_id="dev-1")
    await api.log.change(audience, pid, entered=True)
    async with vendor(_ok) as braze:
        sync = await _braze_sync(api, braze.url, "device_id", {"membership": "array"})
        await run(api, sync.id)
        await api.log.change(audience, pid, entered=False)
        await run(api, sync.id)
    alias = {"alias_name": "dev-1", "alias_label": "device_id"}
    assert [body["attributes"] for _, _, body in braze.requests] == [
        [{"user_alias": alias, "audiences": {"add": ["fans"]}, "_update_existing_only": True}],
        [{"user_alias": alias, "audiences": {"remove": ["fans"]}, "_update_existing_only": True}],
    ]


async def test_bad_braze_options_are_refused(api: SyncApi) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.CreateDestination(
            sync_pb2.CreateDestinationRequest(
                destination=sync_pb2.Destination(
                    name="braze",
                    kind=sync_pb2.DESTINATION_KIND_BRAZE,
                    base_url="http://127.0.0.1:9",
                    secret=REST_KEY,
                    options={"membership": "list", "colour": "red"},
                )
            ),
            metadata=api.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in field_violations(refused.value)} == {
        "destination.options[membership]",
        "destination.options[colour]",
    }
