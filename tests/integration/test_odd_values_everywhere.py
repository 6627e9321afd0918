"""No request value makes any RPC of any service answer INTERNAL or UNKNOWN.

Every method of the five services (and AdminService) gets, one at a time, a request
whose single field holds an odd value of its kind: NUL and over-long strings, invalid
JSON in bytes fields (too deep, NaN, invalid UTF-8, numbers past a double or an int64,
definitions with absurd windows), integers at the edges of 64 bits, NaN and infinity,
and nested messages filled the same way two levels down. Each answer must be OK or a
client error. The values are built from the message descriptors, so a method or field
added later is swept too.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import grpc
import pytest
from audiences.v1 import (
    admin_pb2,
    ingest_pb2,
    prediction_pb2,
    profile_pb2,
    segmentation_pb2,
    sync_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from services.shared.auth import OPERATOR, required_scope
from services.shared.config import Settings
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process
from tests.helpers.wire import delimited, varint

pytestmark = pytest.mark.integration

SERVICES = {
    "ingest": [ingest_pb2, admin_pb2],
    "segmentation": [segmentation_pb2],
    "prediction": [prediction_pb2],
    "profile": [profile_pb2],
    "sync": [sync_pb2],
}
# CreateWorkspace answers only the operator's token: these processes are given one.
OPERATOR_TOKEN = "operator-" + "h" * 40


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, operator_token=OPERATOR_TOKEN)


SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
ODD_TEXT = [b"\x00", b"a" * 70_000, b"-1", "\u202e".encode()]
ODD_JSON = [
    b"[" * 3000,
    b'{"a": NaN}',
    b"\xff\xfe",
    b'"text"',
    b'{"all": [' + b'{"not": ' * 200 + b"{}" + b"}" * 200 + b"]}",
    b'{"trait": {"name": "x", "op": "gt", "value": 123456789012345678901234567890}}',
    b'{"trait": {"name": "\\u0000", "op": "eq", "value": "\\u0000"}}',
    b'{"event": {"name": "E", "window": {"within_days": 1e18}}}',
    b'{"event": {"name": "E", "window": {"between_days": [5, 1e300]}}}',
    b'{"event": {"name": "E", "count": {"op": "gte", "value": -99999999999999999999}}}',
    b'{"funnel": {"steps": [{"name": "A"}, {"name": "B"}], "within_seconds": 1e300}}',
]
ODD_INTEGERS = [2**63 - 1, 2**64 - 1, 2**31, 999]
VARINTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_ENUM,
    FieldDescriptor.TYPE_BOOL,
}


def _odd_fields(field: FieldDescriptor, depth: int) -> Iterator[bytes]:
    """Encodings of `field` holding each odd value of its kind."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        yield from (delimited(field.number, v) for v in ODD_TEXT)
    elif kind == FieldDescriptor.TYPE_BYTES:
        yield from (delimited(field.number, v) for v in [b"\x00", *ODD_JSON])
    elif kind in VARINTS:
        yield from (varint(field.number << 3) + varint(v) for v in ODD_INTEGERS)
    elif kind == FieldDescriptor.TYPE_DOUBLE:
        for number in (float("nan"), float("inf"), -1e308):
            yield varint(field.number << 3 | 1) + struct.pack("<d", number)
    elif kind == FieldDescriptor.TYPE_FLOAT:
        for number in (float("nan"), float("inf")):
            yield varint(field.number << 3 | 5) + struct.pack("<f", number)
    elif kind == FieldDescriptor.TYPE_MESSAGE and depth < 2:
        for inner in odd_requests(field.message_type, depth + 1):
            yield delimited(field.number, inner)


def odd_requests(message: Descriptor, depth: int = 0) -> Iterator[bytes]:
    """The empty message, then one per field and odd value."""
    yield b""
    for field in message.fields:
        yield from _odd_fields(field, depth)


async def _answer(
    channel: grpc.aio.Channel, path: str, method: MethodDescriptor, request: bytes, key: str
) -> tuple[grpc.StatusCode, str]:
    metadata = bearer(key)
    try:
        if method.client_streaming and method.server_streaming:
            replies = channel.stream_stream(path)(iter([request]), metadata=metadata, timeout=3)
            async for _ in replies:
                pass
        elif method.client_streaming:
            await channel.stream_unary(path)(iter([request]), metadata=metadata, timeout=3)
        elif method.server_streaming:
            # Watch-style streams run until the deadline: DEADLINE_EXCEEDED is fine.
            async for _ in channel.unary_stream(path)(request, metadata=metadata, timeout=3):
                pass
        else:
            await channel.unary_unary(path)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_no_odd_value_makes_any_method_answer_a_server_error(
    resources, workspace: WorkspaceKeys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INGEST_HTTP_PORT", "0")
    monkeypatch.setenv("PROFILE_HTTP_PORT", "0")
    # The key each method needs, so every request reaches its servicer.
    key_of_scope = {
        "admin": workspace.admin,
        "profile:read": workspace.profile,
        "ingest:write": workspace.ingest,
        OPERATOR: OPERATOR_TOKEN,
    }
    server_errors: list[tuple[str, bytes, str]] = []
    calls = 0
    async with in_process(resources, list(SERVICES)) as addresses:
        for name, modules in SERVICES.items():
            async with grpc.aio.insecure_channel(addresses[name]) as channel:
                for service in (s for m in modules for s in m.DESCRIPTOR.services_by_name.values()):
                    for method in service.methods:
                        path = f"/{service.full_name}/{method.name}"
                        key = key_of_scope[required_scope(path) or "admin"]
                        for request in odd_requests(method.input_type):
                            calls += 1
                            code, details = await _answer(channel, path, method, request, key)
                            if code in SERVER_ERRORS:
                                server_errors.append(
                                    (path, request[:40], f"{code.name}: {details}")
                                )
    assert calls > 1000  # the sweep reached the methods
    assert server_errors == []
