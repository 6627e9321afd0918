"""Fixtures of the sync integration tests: the sync service in this process on real
Postgres and Redis, a key, and the membership log writer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from audiences.v1 import sync_pb2_grpc
from cryptography.fernet import Fernet

from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.integration.sync.support import MembershipLog


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The sync settings of these tests: a fresh encryption key, fast retries, and a
    scheduler that stays out of the way (tests tick it themselves)."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("SYNC_SECRET_KEY", key)
    monkeypatch.setenv("SYNC_RETRY_BASE_SECONDS", "0.01")
    monkeypatch.setenv("SYNC_RETRY_MAX_SECONDS", "5")
    monkeypatch.setenv("SYNC_SCHEDULER_INTERVAL_SECONDS", "3600")
    return key


@dataclass
class SyncApi:
    stub: sync_pb2_grpc.SyncServiceStub
    metadata: tuple[tuple[str, str], ...]
    log: MembershipLog


@pytest.fixture
async def api(
    resources: Resources, workspace: WorkspaceKeys, secret_key: str
) -> AsyncIterator[SyncApi]:
    """A sync service in this process and a client with the workspace's admin key."""
    async with in_process(resources, ["sync"]) as addresses, channel(addresses["sync"]) as ch:
        yield SyncApi(
            sync_pb2_grpc.SyncServiceStub(ch),
            bearer(workspace.admin),
            MembershipLog(resources.engine, workspace.workspace_id),
        )
