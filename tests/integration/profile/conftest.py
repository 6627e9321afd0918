"""Fixtures of the profile integration tests: the profile service in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from audiences.v1 import profile_pb2_grpc

from services.shared.server import Resources
from tests.helpers.servers import in_process


@pytest.fixture
async def profile_stub(
    resources: Resources, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[profile_pb2_grpc.ProfileServiceStub]:
    """A stub on a profile service started on port 0 (its HTTP view on a free port too)."""
    monkeypatch.setenv("PROFILE_HTTP_PORT", "0")
    async with in_process(resources, ["profile"]) as addresses:
        async with grpc.aio.insecure_channel(addresses["profile"]) as channel:
            yield profile_pb2_grpc.ProfileServiceStub(channel)
