"""Methods a ServiceSpec names as pre-encoded are registered without a response serializer."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.shared.auth import KeyStore
from services.shared.server import GuardedServer

pytestmark = pytest.mark.unit

SERVICE = "audiences.v1.ProfileService"


class _Recorder:
    """Stands in for grpc.aio.Server: keeps what GuardedServer registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.update(handlers)


async def _behaviour(request: Any, context: Any) -> bytes:
    return b"\x0a\x017"


def _serialize(message: Any) -> bytes:
    raise AssertionError("a pre-encoded response must not be serialized")


def _parse(data: bytes) -> bytes:
    return data


def test_only_the_named_methods_lose_their_response_serializer() -> None:
    recorder = _Recorder()
    server = GuardedServer(
        recorder,  # type: ignore[arg-type]
        KeyStore.__new__(KeyStore),
        frozenset({f"/{SERVICE}/GetProfile"}),
    )
    handler = grpc.unary_unary_rpc_method_handler(
        _behaviour, request_deserializer=_parse, response_serializer=_serialize
    )
    server.add_registered_method_handlers(
        SERVICE, {"GetProfile": handler, "BatchGetProfiles": handler}
    )
    raw, built = recorder.handlers["GetProfile"], recorder.handlers["BatchGetProfiles"]
    assert raw.response_serializer is None
    # Requests reach the guard as bytes: it decodes them (answering INVALID_ARGUMENT).
    assert raw.request_deserializer is None
    assert built.response_serializer is _serialize


def test_a_streaming_method_cannot_be_pre_encoded() -> None:
    server = GuardedServer(
        _Recorder(),  # type: ignore[arg-type]
        KeyStore.__new__(KeyStore),
        frozenset({f"/{SERVICE}/GetProfile"}),
    )

    async def stream(request: Any, context: Any) -> Any:
        yield b""

    with pytest.raises(ValueError, match="unary-unary"):
        server.add_registered_method_handlers(
            SERVICE, {"GetProfile": grpc.unary_stream_rpc_method_handler(stream)}
        )
