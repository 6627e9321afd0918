"""Client-side helpers: authorised metadata and waiting for health."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an API key."""
    return (("authorization", f"Bearer {secret}"),)


async def wait_serving(address: str, within: float = 30.0, service: str = "") -> None:
    """Poll grpc.health.v1 until `address` reports SERVING (or fail after `within`)."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as error:
                last_error = error
        await asyncio.sleep(0.1)  # polling a condition with a deadline, not a fixed wait
    raise TimeoutError(f"{address} not SERVING after {within}s: {last_error}")
