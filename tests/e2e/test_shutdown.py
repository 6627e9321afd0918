"""SIGTERM drains: watchers are told NOT_SERVING before the server stops, and the
process exits cleanly."""

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.dev_runner import start_processes
from tests.helpers import backends
from tests.helpers.grpc_client import wait_serving

pytestmark = pytest.mark.e2e


async def test_sigterm_announces_not_serving_then_exits_cleanly(template_database: str) -> None:
    database_url = await backends.create_database(template=template_database)
    port = backends.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": backends.test_redis_url(),
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    (process,) = start_processes(env, {"profile": port})
    try:
        address = f"127.0.0.1:{port}"
        await wait_serving(address)
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            statuses = [(await watch.read()).status]
            process.terminate()
            statuses.append((await watch.read()).status)
        assert statuses == [
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        ]
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        await backends.drop_database(database_url)
