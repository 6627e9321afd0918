"""Client-side helpers: authorised metadata and waiting for health."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an API key."""
    return (("authorization", f"Bearer {secret}"),)


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """A channel to `address`: plaintext, or TLS with `credentials`."""
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def wait_serving(
    address: str,
    within: float = 30.0,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll grpc.health.v1 until `address` reports SERVING (or fail after `within`);
    over TLS with `credentials`."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        async with channel(address, credentials) as connected:
            try:
                reply = await health_pb2_grpc.HealthStub(connected).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as error:
                last_error = error
        await asyncio.sleep(0.1)  # polling a condition with a deadline, not a fixed wait
    raise TimeoutError(f"{address} not SERVING after {within}s: {last_error}")
