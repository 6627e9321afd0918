"""TLS on every port from the certificate files in the settings: the services run as
processes with a certificate made for the test; gRPC and both HTTP ports answer over
TLS and refuse plaintext, and with a client CA (mutual TLS) refuse a client without a
certificate that CA signed."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
from audiences.v1 import admin_pb2, admin_pb2_grpc

from tests.conftest import WorkspaceKeys
from tests.helpers.backends import free_port
from tests.helpers.certificates import Certificates, make_certificates
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Deployment:
    """The running services: addresses, HTTP URLs, the files they were given, and
    whether they ask clients for certificates (mutual TLS)."""

    ingest: str
    gateway_url: str
    profile_url: str
    certificates: Certificates
    mutual: bool


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def _grpc_credentials(
    certificates: Certificates, with_client_cert: bool
) -> grpc.ChannelCredentials:
    if not with_client_cert:
        return grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=certificates.client_key.read_bytes(),
        certificate_chain=certificates.client_cert.read_bytes(),
    )


def _https(certificates: Certificates, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if with_client_cert:
        context.load_cert_chain(str(certificates.client_cert), str(certificates.client_key))
    return context


@asynccontextmanager
async def _deployed(
    database_url: str, redis_url: str, certificates: Certificates, mutual: bool
) -> AsyncIterator[Deployment]:
    """Ingest and profile as processes with TLS on (and a client CA when `mutual`)."""
    http_ports = {"INGEST_HTTP_PORT": free_port(), "PROFILE_HTTP_PORT": free_port()}
    env = {
        "TLS_CERT_FILE": str(certificates.server_cert),
        "TLS_KEY_FILE": str(certificates.server_key),
        **({"TLS_CLIENT_CA_FILE": str(certificates.ca)} if mutual else {}),
        **{name: str(port) for name, port in http_ports.items()},
    }
    async with as_processes(
        database_url,
        redis_url,
        ["ingest", "profile"],
        extra_env=env,
        credentials=_grpc_credentials(certificates, with_client_cert=mutual),
    ) as addresses:
        yield Deployment(
            ingest=addresses["ingest"],
            gateway_url=f"https://localhost:{http_ports['INGEST_HTTP_PORT']}",
            profile_url=f"https://localhost:{http_ports['PROFILE_HTTP_PORT']}",
            certificates=certificates,
            mutual=mutual,
        )


@pytest.fixture(params=[False, True], ids=["tls", "mutual-tls"])
async def deployment(request, database_url, redis_url, certificates):  # type: ignore[no-untyped-def]
    async with _deployed(database_url, redis_url, certificates, request.param) as deployed:
        yield deployed


@pytest.fixture
async def mutual_deployment(database_url, redis_url, certificates):  # type: ignore[no-untyped-def]
    async with _deployed(database_url, redis_url, certificates, mutual=True) as deployed:
        yield deployed


async def _get_workspace(address: str, credentials: grpc.ChannelCredentials | None, key: str):  # type: ignore[no-untyped-def]
    async with channel(address, credentials) as connected:
        return await admin_pb2_grpc.AdminServiceStub(connected).GetWorkspace(
            admin_pb2.GetWorkspaceRequest(), metadata=bearer(key), timeout=5
        )


async def _http_round_trip(
    deployment: Deployment, workspace: WorkspaceKeys, context: ssl.SSLContext
) -> None:
    """An identify through the gateway, then its trait read back from the profile view."""
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sent() -> bool:
            try:
                async with session.post(
                    f"{deployment.gateway_url}/v1/identify",
                    json={"userId": "ada", "traits": {"plan": "pro"}, "messageId": "tls-1"},
                    headers={"Authorization": aiohttp.encode_basic_auth(workspace.ingest, "")},
                ) as reply:
                    assert reply.status == 200, await reply.text()
                    return True
            except aiohttp.ClientConnectorError:
                return False  # the HTTP worker is still binding its port

        await eventually(sent, 15, "the gateway answering over TLS")

        async def traits() -> dict[str, object] | None:
            try:
                async with session.get(
                    f"{deployment.profile_url}/v1/profiles/user_id:ada/traits",
                    headers={"Authorization": f"Bearer {workspace.profile}"},
                ) as reply:
                    if reply.status != 200:
                        return None
                    return orjson.loads(await reply.read())["traits"]
            except aiohttp.ClientConnectorError:
                return None

        assert await eventually(traits, 15, "the profile view answering over TLS") == {
            "plan": "pro"
        }


async def test_every_port_serves_tls_and_refuses_plaintext(  # type: ignore[no-untyped-def]
    deployment: Deployment, workspace: WorkspaceKeys
) -> None:
    certificates, mutual = deployment.certificates, deployment.mutual
    credentials = _grpc_credentials(certificates, with_client_cert=mutual)
    reply = await _get_workspace(deployment.ingest, credentials, workspace.admin)
    assert reply.id == workspace.workspace_id

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _get_workspace(deployment.ingest, None, workspace.admin)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE

    await _http_round_trip(deployment, workspace, _https(certificates, with_client_cert=mutual))
    for url in (deployment.gateway_url, deployment.profile_url):
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                plain = url.replace("https://", "http://")
                async with session.get(f"{plain}/v1/profiles/user_id:ada/traits") as reply:
                    await reply.read()


async def test_mutual_tls_refuses_a_client_without_a_certificate(  # type: ignore[no-untyped-def]
    mutual_deployment: Deployment, workspace: WorkspaceKeys
) -> None:
    deployment = mutual_deployment
    certificates = deployment.certificates
    anonymous = _grpc_credentials(certificates, with_client_cert=False)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _get_workspace(deployment.ingest, anonymous, workspace.admin)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    # The same client with the certificate the CA signed is let in.
    signed = _grpc_credentials(certificates, with_client_cert=True)
    assert (await _get_workspace(deployment.ingest, signed, workspace.admin)).id

    await _http_round_trip(deployment, workspace, _https(certificates, with_client_cert=True))
    no_certificate = aiohttp.TCPConnector(ssl=_https(certificates, with_client_cert=False))
    async with aiohttp.ClientSession(connector=no_certificate) as session:
        for url in (deployment.gateway_url, deployment.profile_url):
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{url}/v1/profiles/user_id:ada/traits") as reply:
                    await reply.read()
