"""An Amplitude-style fake server receives exactly the documented cohort requests:
one upload that creates the cohort, then membership adds and removes."""

from __future__ import annotations

import base64

import grpc
import pytest
from audiences.v1 import sync_pb2

from services.shared.errors import field_violations
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import audience_sync, get_sync, run
from tests.integration.sync.support import vendor

pytestmark = pytest.mark.integration

OPTIONS = {"api_key": "amp-api-key", "app_id": "123456", "owner": "owner@example.com"}
SECRET = "amp-secret-key"


def _answer(path: str, body: object) -> tuple[int, object]:
    if path == "/api/3/cohorts/upload":
        return 200, {"cohortId": "cohort-1"}
    return 200, {"cohort_id": "cohort-1", "memberships_result": []}


async def _destination(api: SyncApi, url: str, **options: str) -> sync_pb2.Destination:
    return await api.stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="amp",
                kind=sync_pb2.DESTINATION_KIND_AMPLITUDE,
                base_url=url,
                secret=SECRET,
                options={**OPTIONS, **options},
            )
        ),
        metadata=api.metadata,
    )


async def _sync(api: SyncApi, destination_id: str, id_type: str = "user_id") -> sync_pb2.Sync:
    return await audience_sync(api, destination_id, "power_users", id_type, max_removal_fraction=1)


async def test_first_sync_creates_the_cohort_then_adds_and_removes(api: SyncApi) -> None:
    audience = await api.log.audience("power_users")
    ann = await api.log.profile(user_id="ann")
    bob = await api.log.profile(user_id="bob")
    carl = await api.log.profile(user_id="carl")
    for pid in (ann, bob):
        await api.log.change(audience, pid, entered=True)
    async with vendor(_answer) as amplitude:
        destination = await _destination(api, amplitude.url, cohort_name="Power users")
        sync = await _sync(api, destination.id)
        assert (await run(api, sync.id)).added == 2
        await api.log.change(audience, carl, entered=True)
        await api.log.change(audience, ann, entered=False)
        await api.log.change(audience, ann, entered=True)
        second = await run(api, sync.id)
        assert (second.status, second.added, second.removed) == ("succeeded", 2, 1)
    expected_auth = "Basic " + base64.b64encode(b"amp-api-key:amp-secret-key").decode()
    assert [(path, headers["Authorization"]) for path, headers, _ in amplitude.requests] == [
        ("/api/3/cohorts/upload", expected_auth),
        ("/api/3/cohorts/membership", expected_auth),
    ]
    assert amplitude.requests[0][2] == {
        "name": "Power users",
        "app_id": 123456,
        "id_type": "BY_USER_ID",
        "ids": ["ann", "bob"],
        "owner": "owner@example.com",
        "published": True,
    }
    assert amplitude.requests[1][2] == {
        "cohort_id": "cohort-1",
        "memberships": [
            {"ids": ["carl"], "id_type": "BY_NAME", "operation": "ADD"},
            {"ids": ["ann"], "id_type": "BY_NAME", "operation": "REMOVE"},
            {"ids": ["ann"], "id_type": "BY_NAME", "operation": "ADD"},
        ],
        "skip_invalid_ids": True,
    }
    assert (await get_sync(api, sync.id)).cursor == 5


async def test_amplitude_needs_its_options_and_a_matching_id_type(api: SyncApi) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.CreateDestination(
            sync_pb2.CreateDestinationRequest(
                destination=sync_pb2.Destination(
                    name="amp",
                    kind=sync_pb2.DESTINATION_KIND_AMPLITUDE,
                    secret=SECRET,
                    options={"app_id": "abc", "owner": "nobody", "region": "mars"},
                )
            ),
            metadata=api.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in field_violations(refused.value)} == {
        "destination.options[api_key]",
        "destination.options[app_id]",
        "destination.options[owner]",
        "destination.options[region]",
    }
    await api.log.audience("power_users")
    destination = await _destination(api, "", region="eu")
    with pytest.raises(grpc.aio.AioRpcError) as wrong_id:
        await _sync(api, destination.id, id_type="email")
    assert [v.field for v in field_violations(wrong_id.value)] == ["sync.id_type"]
