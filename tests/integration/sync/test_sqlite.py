"""The embedded default (SQLite): a sync backfills, delivers changes and exports."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from audiences.v1 import sync_pb2, sync_pb2_grpc

from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.conftest import make_workspace
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.flows import run, webhook_sync
from tests.integration.sync.support import MembershipLog, webhook

pytestmark = pytest.mark.integration

SECRET = "embedded-secret"


async def test_sync_and_export_on_sqlite(tmp_path: Path, secret_key: str, redis_url: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sync.db"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    resources = await Resources.open(Settings(database_url=url, redis_url=redis_url), "test")
    try:
        keys = await make_workspace(resources, "embedded")
        log = MembershipLog(resources.engine, keys.workspace_id)
        audience = await log.audience("vips")
        ann = await log.profile(email="ann@example.com")
        bob = await log.profile(email="bob@example.com")
        await log.change(audience, ann, entered=True)
        async with in_process(resources, ["sync"]) as at, channel(at["sync"]) as ch:
            api = SyncApi(sync_pb2_grpc.SyncServiceStub(ch), bearer(keys.admin), log)
            async with webhook(SECRET) as receiver:
                sync = await webhook_sync(api, receiver.url, SECRET, "vips")
                assert (await run(api, sync.id)).added == 1
                await log.change(audience, bob, entered=True)
                assert (await run(api, sync.id)).added == 1
            assert [c["id"] for c in receiver.applied] == ["ann@example.com", "bob@example.com"]
            chunks = [
                c
                async for c in api.stub.ExportAudience(
                    sync_pb2.ExportAudienceRequest(
                        audience_key="vips", format=sync_pb2.EXPORT_FORMAT_FORMATTED
                    ),
                    metadata=api.metadata,
                )
            ]
        rows = list(csv.DictReader(io.StringIO(b"".join(c.csv for c in chunks).decode())))
        assert [r["email"] for r in rows] == ["ann@example.com", "bob@example.com"]
    finally:
        await resources.close()
