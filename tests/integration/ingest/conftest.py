"""Fixtures of the ingest integration tests: the ingest service in this process."""

from collections.abc import AsyncIterator

import grpc
import pytest
from audiences.v1 import ingest_pb2_grpc

from tests.helpers.servers import in_process


@pytest.fixture
async def channel(resources, monkeypatch) -> AsyncIterator[grpc.aio.Channel]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INGEST_HTTP_PORT", "0")
    async with in_process(resources, ["ingest"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["ingest"]) as opened:
            yield opened


@pytest.fixture
def stub(channel) -> ingest_pb2_grpc.IngestServiceStub:  # type: ignore[no-untyped-def]
    return ingest_pb2_grpc.IngestServiceStub(channel)
