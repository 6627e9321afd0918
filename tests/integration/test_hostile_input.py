"""Hostile input over HTTP and gRPC: each case gets its exact client-error status, and
while it is being handled the services keep answering.

Ingest (with its HTTP gateway) and profile (with its HTTP view) run in one process and
one event loop, as `make run` runs them, so a request that blocked the loop would stall
both. While each hostile request is in flight, health checks of both services and a
GetProfile are sent one round after another (each with a 1 s deadline), and each must
succeed: a correctness check that nothing stalls, not a timing benchmark.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import grpc
import orjson
import pytest
from audiences.v1 import common_pb2, profile_pb2, profile_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.ingest.app import components
from services.ingest.gateway import MAX_BODY_BYTES, Gateway, build_app
from services.profile import httpview
from services.profile.app import build as build_profiles
from services.shared.config import Settings
from services.shared.server import MAX_MESSAGE_BYTES
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.helpers.wire import delimited

pytestmark = pytest.mark.integration

PROBE_DEADLINE_SECONDS = 1.0


# CreateWorkspace answers only the operator's token: these processes are given one.
OPERATOR_TOKEN = "operator-" + "h" * 40


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, operator_token=OPERATOR_TOKEN)


def gzip_bomb(size: int) -> bytes:
    """About `size` bytes of gzip that inflate to ~1,000 times as much (no trailer:
    nothing honest reads that far)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    head = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the deflater starts afresh: the next MiB compresses to the same block.
    block = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    return head + block * max(1, (size - len(head)) // len(block))


def basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"{secret}:".encode()).decode()


def track(message_id: str, **extra: object) -> dict[str, object]:
    return {"type": "track", "userId": "u", "event": "E", "messageId": message_id, **extra}


def batch(*events: dict[str, object]) -> bytes:
    return orjson.dumps({"batch": list(events)})


BOMB_10MB = gzip_bomb(10_000_000)
BOMB_UNDER_CAP = gzip_bomb(3_000_000)


@dataclass(frozen=True)
class HttpCase:
    """One request: `auth` is a key name (ingest, profile), a literal header, or None."""

    id: str
    path: str
    status: int
    body: bytes | Callable[[], AsyncIterator[bytes]] = b""
    method: str = "POST"
    auth: str | None = "ingest"
    headers: dict[str, str] = field(default_factory=dict)


async def _chunked(total: int) -> AsyncIterator[bytes]:
    # No Content-Length: the cap has to hold while reading.
    chunk = b" " * 65536
    for _ in range(total // len(chunk)):
        yield chunk


GATEWAY_CASES = [
    HttpCase("gzip bomb of 10 MB, no key", "/v1/batch", 413, BOMB_10MB, auth=None,
             headers={"Content-Encoding": "gzip"}),
    HttpCase("gzip bomb of 10 MB, with a key", "/v1/batch", 413, BOMB_10MB,
             headers={"Content-Encoding": "gzip"}),
    HttpCase("gzip bomb under the raw cap, no key", "/v1/batch", 413, BOMB_UNDER_CAP, auth=None,
             headers={"Content-Encoding": "gzip"}),
    HttpCase("gzip bomb under the raw cap, with a key", "/v1/batch", 413, BOMB_UNDER_CAP,
             headers={"Content-Encoding": "gzip"}),
    HttpCase("gzip bomb, unknown key in the header", "/v1/batch", 401, BOMB_10MB,
             auth="Bearer aud_unknown", headers={"Content-Encoding": "gzip"}),
    HttpCase("plain body over the cap", "/v1/batch", 413, b" " * (MAX_BODY_BYTES + 1)),
    HttpCase("chunked body over the cap", "/v1/batch", 413,
             lambda: _chunked(3 * MAX_BODY_BYTES)),
    HttpCase("gzip header on a plain body", "/v1/batch", 400, batch(track("p1")),
             headers={"Content-Encoding": "gzip"}),
    HttpCase("truncated gzip", "/v1/batch", 400, gzip.compress(batch(track("t1")))[:-12],
             headers={"Content-Encoding": "gzip"}),
    HttpCase("gzip then garbage", "/v1/batch", 400, gzip.compress(batch(track("g1"))) + b"junk",
             headers={"Content-Encoding": "gzip"}),
    HttpCase("deflate header on a plain body", "/v1/track", 400, orjson.dumps(track("d1")),
             headers={"Content-Encoding": "deflate"}),
    HttpCase("brotli", "/v1/batch", 415, batch(track("b1")), headers={"Content-Encoding": "br"}),
    HttpCase("form content type", "/v1/batch", 415, b"a=1",
             headers={"Content-Type": "application/x-www-form-urlencoded"}),
    HttpCase("multipart content type", "/v1/batch", 415, b"--x--",
             headers={"Content-Type": "multipart/form-data; boundary=x"}),
    HttpCase("empty body", "/v1/batch", 400, b""),
    HttpCase("empty gzip body", "/v1/batch", 400, b"", headers={"Content-Encoding": "gzip"}),
    HttpCase("JSON array", "/v1/batch", 400, b"[1, 2]"),
    HttpCase("JSON string", "/v1/track", 400, b'"track"'),
    HttpCase("JSON nested past orjson's depth", "/v1/batch", 400, b"[" * 2000 + b"]" * 2000),
    HttpCase("invalid UTF-8", "/v1/track", 400, b'{"userId": "\xff", "event": "E"}'),
    HttpCase("NaN", "/v1/track", 400, b'{"userId": "u", "event": "E", "properties": {"x": NaN}}'),
    HttpCase("number beyond a double", "/v1/track", 400,
             b'{"userId": "u", "event": "E", "properties": {"x": 1e400}}'),
    HttpCase("UTF-8 byte-order mark", "/v1/track", 400, b'\xef\xbb\xbf{"userId": "u"}'),
    HttpCase("batch not a list", "/v1/batch", 400, b'{"batch": {"type": "track"}}'),
    HttpCase("1,001 events", "/v1/batch", 413,
             batch(*(track(f"many{n}") for n in range(1001)))),
    HttpCase("no key anywhere", "/v1/batch", 401, batch(track("k1")), auth=None),
    HttpCase("unknown writeKey in the body", "/v1/batch", 401,
             orjson.dumps({"writeKey": "aud_nope", "batch": [track("k2")]}), auth=None),
    HttpCase("writeKey not a string", "/v1/batch", 401,
             orjson.dumps({"writeKey": 7, "batch": [track("k3")]}), auth=None),
    HttpCase("basic auth not base64", "/v1/batch", 401, batch(track("k4")), auth="Basic !!!"),
    HttpCase("basic auth not UTF-8", "/v1/batch", 401, batch(track("k5")),
             auth="Basic " + base64.b64encode(b"\xff\xfe:").decode()),
    HttpCase("basic auth empty user", "/v1/batch", 401, batch(track("k6")),
             auth="Basic " + base64.b64encode(b":pw").decode()),
    HttpCase("unknown auth scheme", "/v1/batch", 401, batch(track("k7")), auth="Digest x=1"),
    HttpCase("bearer without a key", "/v1/batch", 401, batch(track("k8")), auth="Bearer"),
    HttpCase("key without ingest:write", "/v1/batch", 403, batch(track("k9")), auth="profile"),
    HttpCase("GET", "/v1/batch", 405, method="GET"),
    HttpCase("PUT", "/v1/track", 405, orjson.dumps(track("m1")), method="PUT"),
    HttpCase("unknown path", "/v1/nope", 404, batch(track("n1"))),
    HttpCase("root", "/", 404, method="GET"),
    HttpCase("header line past aiohttp's limit", "/v1/batch", 400, batch(track("h1")),
             headers={"X-Padding": "x" * 20_000}),
    # Accepted as they are: numbers past 64 bits read as doubles, the body's writeKey.
    HttpCase("integer past 64 bits", "/v1/track", 200,
             b'{"userId": "u", "event": "E", "properties": {"x": 123456789012345678901234567890}}'),
    HttpCase("writeKey in the body as text/plain", "/v1/import", 200, b"",
             auth="body", headers={"Content-Type": "text/plain"}),
]  # fmt: skip

PROFILE_VIEW_CASES = [
    HttpCase("GET with a gzip bomb body", "/v1/profiles/user_id:alive/traits", 200,
             BOMB_10MB, method="GET", auth="profile", headers={"Content-Encoding": "gzip"}),
    HttpCase("no key", "/v1/profiles/user_id:alive/traits", 401, method="GET", auth=None),
    HttpCase("basic auth not base64", "/v1/profiles/user_id:alive/traits", 401, method="GET",
             auth="Basic !!!"),
    HttpCase("POST", "/v1/profiles/user_id:alive/traits", 405, b"{}", auth="profile"),
    HttpCase("unknown path", "/v1/profile/user_id:alive", 404, method="GET", auth="profile"),
    HttpCase("NUL in the identifier", "/v1/profiles/user_id:%00/events", 400, method="GET",
             auth="profile"),
]  # fmt: skip


@dataclass
class Services:
    grpc_channels: dict[str, grpc.aio.Channel]
    gateway: str
    profile_view: str
    keys: WorkspaceKeys


@pytest.fixture
async def services(resources, workspace, monkeypatch) -> AsyncIterator[Services]:  # type: ignore[no-untyped-def]
    # The HTTP front ends are started here on port 0 (their workers' ports are not
    # reported back), in the same process and event loop as the gRPC servers.
    monkeypatch.setenv("INGEST_HTTP_PORT", "0")
    monkeypatch.setenv("PROFILE_HTTP_PORT", "0")
    async with in_process(resources, ["ingest", "profile"]) as addresses:
        gateway = Gateway(build_app(components(resources).ingestor, resources.keys), "127.0.0.1", 0)
        gateway_port = await gateway.start()
        view, view_port = await httpview.start(
            build_profiles(resources), resources.keys, "127.0.0.1", 0
        )
        channels = {name: grpc.aio.insecure_channel(address) for name, address in addresses.items()}
        found = Services(
            channels,
            f"http://127.0.0.1:{gateway_port}",
            f"http://127.0.0.1:{view_port}",
            workspace,
        )
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{found.gateway}/v1/identify",
                    data=orjson.dumps({"userId": "alive", "traits": {"plan": "pro"}}),
                    headers={"Authorization": basic(workspace.ingest)},
                ) as reply,
            ):
                assert reply.status == 200
            yield found
        finally:
            for channel in channels.values():
                await channel.close()
            await view.cleanup()
            await gateway.stop()


async def _probe_once(services: Services) -> None:
    """A health check of each service and a GetProfile, each within its deadline."""
    ingest, profile = services.grpc_channels["ingest"], services.grpc_channels["profile"]
    health_checks = [
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=PROBE_DEADLINE_SECONDS
        )
        for channel in (ingest, profile)
    ]
    reading = profile_pb2_grpc.ProfileServiceStub(profile).GetProfile(
        profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value="alive")
        ),
        metadata=bearer(services.keys.profile),
        timeout=PROBE_DEADLINE_SECONDS,
    )
    *health_replies, found = await asyncio.gather(*health_checks, reading)
    assert all(r.status == health_pb2.HealthCheckResponse.SERVING for r in health_replies)
    assert orjson.loads(found.traits) == {"plan": "pro"}


async def while_answering(services: Services, hostile: Awaitable[object]) -> object:
    """The result of `hostile`, probing the services in rounds until it is done."""
    task = asyncio.ensure_future(hostile)
    rounds = 0
    while not task.done() or rounds == 0:
        await _probe_once(services)
        rounds += 1
    return await task


def _named_keys(keys: WorkspaceKeys) -> dict[str, str]:
    return {
        "ingest": keys.ingest,
        "profile": keys.profile,
        "admin": keys.admin,
        "operator": OPERATOR_TOKEN,
    }


def _headers(case: HttpCase, keys: WorkspaceKeys) -> dict[str, str]:
    headers = dict(case.headers)
    named = _named_keys(keys)
    if case.auth in named:
        headers["Authorization"] = basic(named[case.auth])
    elif case.auth is not None and case.auth != "body":
        headers["Authorization"] = case.auth
    return headers


async def _send(base: str, case: HttpCase, keys: WorkspaceKeys) -> tuple[int, dict[str, object]]:
    body: object = case.body() if callable(case.body) else case.body
    if case.auth == "body":
        body = orjson.dumps({"writeKey": keys.ingest, "batch": [track("wk1")]})
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            case.method, base + case.path, data=body, headers=_headers(case, keys)
        ) as reply,
    ):
        answer = await reply.read()
        return reply.status, orjson.loads(
            answer
        ) if reply.content_type == "application/json" else {}


@pytest.mark.parametrize("case", GATEWAY_CASES, ids=[c.id for c in GATEWAY_CASES])
async def test_gateway_answers_each_hostile_request_with_its_client_error(
    services: Services, case: HttpCase
) -> None:
    status, body = await while_answering(services, _send(services.gateway, case, services.keys))
    assert status == case.status
    if status == 200:
        assert body["success"] is True and body["accepted"] == 1
    elif case.id != "header line past aiohttp's limit":  # refused by aiohttp's parser
        assert body["success"] is False
        assert isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("case", PROFILE_VIEW_CASES, ids=[c.id for c in PROFILE_VIEW_CASES])
async def test_profile_view_answers_each_hostile_request(
    services: Services, case: HttpCase
) -> None:
    status, body = await while_answering(
        services, _send(services.profile_view, case, services.keys)
    )
    assert status == case.status
    if status == 200:
        assert body["traits"] == {"plan": "pro"}
    else:
        assert body["error"]["message"]


@dataclass(frozen=True)
class GrpcCase:
    id: str
    service: str
    method: str
    request: bytes
    code: grpc.StatusCode
    key: str | None = "ingest"
    shape: str = "unary_unary"  # or unary_stream, stream_stream
    metadata: tuple[tuple[str, str], ...] = ()


INGEST = "/audiences.v1.IngestService/"
CORRUPT = b"\xff\xff\xff\xff"
GRPC_CASES = [
    GrpcCase("corrupt Track", "ingest", INGEST + "Track", CORRUPT,
             grpc.StatusCode.INVALID_ARGUMENT),
    GrpcCase("corrupt Track, no key", "ingest", INGEST + "Track", CORRUPT,
             grpc.StatusCode.UNAUTHENTICATED, key=None),
    GrpcCase("truncated Batch", "ingest", INGEST + "Batch", b"\x0a\x40abc",
             grpc.StatusCode.INVALID_ARGUMENT),
    GrpcCase("invalid UTF-8 in a string field", "ingest", INGEST + "Batch",
             delimited(1, delimited(3, b"\xff\xfe")), grpc.StatusCode.INVALID_ARGUMENT),
    GrpcCase("corrupt StreamEvents", "ingest", INGEST + "StreamEvents", CORRUPT,
             grpc.StatusCode.INVALID_ARGUMENT, shape="stream_stream"),
    GrpcCase("corrupt GetProfile (pre-encoded reply)", "profile",
             "/audiences.v1.ProfileService/GetProfile", CORRUPT,
             grpc.StatusCode.INVALID_ARGUMENT, key="profile"),
    GrpcCase("corrupt health check", "ingest", "/grpc.health.v1.Health/Check", CORRUPT,
             grpc.StatusCode.INVALID_ARGUMENT, key=None),
    GrpcCase("corrupt health watch", "profile", "/grpc.health.v1.Health/Watch", CORRUPT,
             grpc.StatusCode.INVALID_ARGUMENT, key=None, shape="unary_stream"),
    GrpcCase("message past the size limit", "ingest", INGEST + "Batch",
             bytes(MAX_MESSAGE_BYTES + 1),
             grpc.StatusCode.RESOURCE_EXHAUSTED),
    GrpcCase("metadata past the size limit", "ingest", INGEST + "Batch", b"",
             grpc.StatusCode.RESOURCE_EXHAUSTED, metadata=(("x-padding", "x" * 40_000),)),
    GrpcCase("unknown method", "ingest", INGEST + "Nope", b"", grpc.StatusCode.UNIMPLEMENTED),
    # Values only the database refuses (Postgres text holds no NUL; columns have lengths).
    GrpcCase("NUL in a workspace name", "ingest", "/audiences.v1.AdminService/CreateWorkspace",
             delimited(1, b"a\x00b"), grpc.StatusCode.INVALID_ARGUMENT, key="operator"),
    GrpcCase("workspace name past its column", "ingest",
             "/audiences.v1.AdminService/CreateWorkspace", delimited(1, b"w" * 300),
             grpc.StatusCode.INVALID_ARGUMENT, key="operator"),
    GrpcCase("NUL in an identifier of ListEvents", "profile",
             "/audiences.v1.ProfileService/ListEvents",
             delimited(1, delimited(1, b"user_id") + delimited(2, b"\x00")),
             grpc.StatusCode.INVALID_ARGUMENT, key="profile"),
    GrpcCase("basic auth over gRPC", "ingest", INGEST + "Batch", b"",
             grpc.StatusCode.UNAUTHENTICATED, key=None,
             metadata=(("authorization", "Basic !!!"),)),
]  # fmt: skip


async def _call(services: Services, case: GrpcCase) -> grpc.StatusCode:
    channel = services.grpc_channels[case.service]
    metadata = list(case.metadata)
    if case.key is not None:
        metadata += bearer(_named_keys(services.keys)[case.key])
    try:
        if case.shape == "stream_stream":
            call = channel.stream_stream(case.method)(iter([case.request]), metadata=metadata)
            async for _ in call:
                pass
        elif case.shape == "unary_stream":
            async for _ in channel.unary_stream(case.method)(case.request, metadata=metadata):
                pass
        else:
            await channel.unary_unary(case.method)(case.request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c.id for c in GRPC_CASES])
async def test_grpc_answers_each_hostile_request_with_its_client_error(
    services: Services, case: GrpcCase
) -> None:
    assert await while_answering(services, _call(services, case)) == case.code
