"""Starting the real services for tests: in this process on port 0, or as separate
processes on free loopback ports."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from audiences.v1 import ingest_pb2_grpc, segmentation_pb2_grpc

from services.dev_runner import SPECS, start_processes
from services.shared.server import Resources, RunningService, start_service
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import wait_serving

SERVICE_NAMES = [spec.name for spec in SPECS]


@asynccontextmanager
async def in_process(resources: Resources, names: list[str]) -> AsyncIterator[dict[str, str]]:
    """Start the named services on port 0 in this process; yields name -> address."""
    running: list[RunningService] = []
    try:
        for spec in SPECS:
            if spec.name in names:
                running.append(await start_service(spec, resources, 0))
        yield {service.name: f"127.0.0.1:{service.port}" for service in running}
    finally:
        for service in running:
            await service.stop(grace=1)


@asynccontextmanager
async def as_processes(
    database_url: str,
    redis_url: str,
    names: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> AsyncIterator[dict[str, str]]:
    """Start each service as its own process on a free port; yields name -> address.

    `credentials` are the TLS channel credentials to reach them with when `extra_env`
    turns TLS on. The processes get SIGTERM on exit and must drain and stop within 15
    seconds.
    """
    ports = {name: free_port() for name in names or SERVICE_NAMES}
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OTEL_TRACES_EXPORTER": "none",
        "SHUTDOWN_GRACE_SECONDS": "2",
        # HTTP views on free ports, so tests never collide with a running `make run`.
        "INGEST_HTTP_PORT": "0",
        "PROFILE_HTTP_PORT": "0",
        **(extra_env or {}),
    }
    processes = start_processes(env, ports)
    try:
        for port in ports.values():
            await wait_serving(f"127.0.0.1:{port}", credentials=credentials)
        yield {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        for process in processes:
            process.terminate()
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=15))
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        # SIGTERM drains and exits cleanly; anything else is a shutdown bug.
        assert codes == [0] * len(processes), f"exit codes after SIGTERM: {codes}"


@asynccontextmanager
async def ingest_and_segmentation(
    database_url: str, redis_url: str
) -> AsyncIterator[
    tuple[ingest_pb2_grpc.IngestServiceStub, segmentation_pb2_grpc.SegmentationServiceStub]
]:
    """Ingest and segmentation as processes; yields a client stub of each."""
    async with (
        as_processes(database_url, redis_url, ["ingest", "segmentation"]) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
        grpc.aio.insecure_channel(addresses["segmentation"]) as segmentation_channel,
    ):
        yield (
            ingest_pb2_grpc.IngestServiceStub(ingest_channel),
            segmentation_pb2_grpc.SegmentationServiceStub(segmentation_channel),
        )
