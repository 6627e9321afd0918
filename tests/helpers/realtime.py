"""The realtime worker as a real process for tests, started like the services
(tests/helpers/servers.py): its own `python -m services.segmentation.realtime` on a
free loopback health port."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.helpers.backends import free_port
from tests.helpers.grpc_client import wait_serving

# Quick takeover in tests: an entry pending for 300 ms is another worker's to claim.
FAST_TAKEOVER = {
    "REALTIME_CLAIM_IDLE_MS": "300",
    "REALTIME_CLAIM_EVERY_SECONDS": "0.2",
    "REALTIME_BLOCK_MS": "100",
}


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m services.segmentation.realtime` with `env`."""
    return subprocess.Popen([sys.executable, "-m", "services.segmentation.realtime"], env=env)


@asynccontextmanager
async def realtime_worker(
    database_url: str, redis_url: str, consumer: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A worker process named `consumer`, SERVING on grpc.health.v1; on exit it gets
    SIGTERM and must exit 0 (unless the test already killed it)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OTEL_TRACES_EXPORTER": "none",
        "SHUTDOWN_GRACE_SECONDS": "2",
        "GRPC_PORT": str(port),
        "REALTIME_CONSUMER": consumer,
        **FAST_TAKEOVER,
        **(extra_env or {}),
    }
    process = start_worker(env)
    try:
        await wait_serving(f"127.0.0.1:{port}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            assert code == 0, f"realtime worker exit code after SIGTERM: {code}"
