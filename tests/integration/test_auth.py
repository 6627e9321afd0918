"""Every RPC is authorised by an API key of the right scope, inside its own workspace;
only the operator credential creates workspaces."""

import dataclasses

import grpc
import pytest
from audiences.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
)
from sqlalchemy import func, select

from services.shared.db.tables import workspaces
from services.shared.server import Resources, ServiceSpec, start_service
from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration


@pytest.fixture
async def channels(resources):  # type: ignore[no-untyped-def]
    async with in_process(resources, ["ingest", "profile"]) as addresses:
        ingest = grpc.aio.insecure_channel(addresses["ingest"])
        profile = grpc.aio.insecure_channel(addresses["profile"])
        yield ingest, profile
        await ingest.close()
        await profile.close()


async def test_missing_key_is_unauthenticated(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.GetWorkspace(admin_pb2.GetWorkspaceRequest())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in error.value.details()


async def test_unknown_key_is_unauthenticated(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.GetWorkspace(admin_pb2.GetWorkspaceRequest(), metadata=bearer("aud_nope"))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_revoked_key_is_unauthenticated(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    created = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="temp", scopes=["admin"]),
        metadata=bearer(workspace.admin),
    )
    await admin.GetWorkspace(admin_pb2.GetWorkspaceRequest(), metadata=bearer(created.secret))
    await admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(id=created.key.id), metadata=bearer(workspace.admin)
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.GetWorkspace(admin_pb2.GetWorkspaceRequest(), metadata=bearer(created.secret))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_wrong_scope_is_permission_denied(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    ingest = ingest_pb2_grpc.IngestServiceStub(channels[0])
    profile = profile_pb2_grpc.ProfileServiceStub(channels[1])
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await ingest.Batch(ingest_pb2.BatchRequest(), metadata=bearer(workspace.profile))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ingest:write" in error.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile.GetProfile(profile_pb2.GetProfileRequest(), metadata=bearer(workspace.ingest))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer(workspace.ingest))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_right_scope_reaches_the_servicer(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    reply = await admin.GetWorkspace(
        admin_pb2.GetWorkspaceRequest(), metadata=bearer(workspace.admin)
    )
    assert reply.id == workspace.workspace_id
    assert reply.name == "acme"


async def test_a_key_of_one_workspace_can_do_nothing_in_another(  # type: ignore[no-untyped-def]
    channels, resources, workspace
) -> None:
    other = await make_workspace(resources, "globex")
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    theirs = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer(other.admin))
    ours = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer(workspace.admin))
    assert {k.id for k in theirs.keys}.isdisjoint({k.id for k in ours.keys})
    assert len(ours.keys) == 3
    # Revoking another workspace's key is NOT_FOUND and leaves that key working.
    victim = next(k for k in theirs.keys if "admin" in k.scopes)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.RevokeApiKey(
            admin_pb2.RevokeApiKeyRequest(id=victim.id), metadata=bearer(workspace.admin)
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    still = await admin.GetWorkspace(admin_pb2.GetWorkspaceRequest(), metadata=bearer(other.admin))
    assert still.id == other.workspace_id


async def test_bad_scopes_are_invalid_argument_with_field_violation(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    before = await admin.ListApiKeys(
        admin_pb2.ListApiKeysRequest(), metadata=bearer(workspace.admin)
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(name="x", scopes=["root"]),
            metadata=bearer(workspace.admin),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await admin.ListApiKeys(
        admin_pb2.ListApiKeysRequest(), metadata=bearer(workspace.admin)
    )
    assert len(after.keys) == len(before.keys)


def _bare_profile_service(server: grpc.aio.Server, _resources) -> list[str]:  # type: ignore[no-untyped-def]
    # The generated base servicer: every RPC is one whose issue has not landed.
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(
        profile_pb2_grpc.ProfileServiceServicer(), server
    )
    return ["audiences.v1.ProfileService"]


async def test_unimplemented_rpcs_say_so_after_auth(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    bare = await start_service(ServiceSpec("bare", _bare_profile_service), resources, 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bare.port}") as channel:
            profile = profile_pb2_grpc.ProfileServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await profile.ListEvents(profile_pb2.ListEventsRequest())
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await profile.ListEvents(
                    profile_pb2.ListEventsRequest(), metadata=bearer(workspace.profile)
                )
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await bare.stop(grace=1)


OPERATOR_TOKEN = "operator-" + "x" * 40


@pytest.fixture
async def operated(settings, clock):  # type: ignore[no-untyped-def]
    """Resources of a process given the operator credential, and its ingest channel."""
    opened = await Resources.open(
        dataclasses.replace(settings, operator_token=OPERATOR_TOKEN), "test", clock=clock
    )
    async with in_process(opened, ["ingest"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["ingest"]) as channel:
            yield opened, admin_pb2_grpc.AdminServiceStub(channel)
    await opened.close()


async def _workspace_count(resources: Resources) -> int:
    async with resources.engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(workspaces))).scalar_one()


async def test_only_the_operator_creates_workspaces(operated) -> None:  # type: ignore[no-untyped-def]
    resources, admin = operated
    tenant = await make_workspace(resources, "acme")
    request = admin_pb2.CreateWorkspaceRequest(name="new")
    for secret in (tenant.admin, tenant.ingest):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await admin.CreateWorkspace(request, metadata=bearer(secret))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "operator" in error.value.details()
    for secret in ("aud_unknown", OPERATOR_TOKEN + "x"):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await admin.CreateWorkspace(request, metadata=bearer(secret))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await _workspace_count(resources) == 1

    created = await admin.CreateWorkspace(request, metadata=bearer(OPERATOR_TOKEN))
    assert created.workspace.name == "new"
    assert await _workspace_count(resources) == 2
    # The new workspace's own admin key works, inside that workspace only.
    mine = await admin.GetWorkspace(
        admin_pb2.GetWorkspaceRequest(), metadata=bearer(created.admin_secret)
    )
    assert mine.id == created.workspace.id != tenant.workspace_id
    # The operator token is no workspace key: it reaches no workspace's data.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.GetWorkspace(admin_pb2.GetWorkspaceRequest(), metadata=bearer(OPERATOR_TOKEN))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_an_operator_token_no_rpc_creates_workspaces(channels, workspace) -> None:  # type: ignore[no-untyped-def]
    admin = admin_pb2_grpc.AdminServiceStub(channels[0])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await admin.CreateWorkspace(
            admin_pb2.CreateWorkspaceRequest(name="new"), metadata=bearer(workspace.admin)
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
