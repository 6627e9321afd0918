"""`make run`'s path: the dev runner on the embedded default (SQLite file + in-process
Redis-compatible store) brings up all five services in one process with nothing else
installed, creates the demo workspace, and serves real calls."""

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest
from audiences.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
)

from services.shared.config import DEFAULT_PORTS
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer, wait_serving

pytestmark = pytest.mark.e2e


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], dict]]:  # type: ignore[type-arg]
    ports = {name: free_port() for name in DEFAULT_PORTS}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "GRPC_PORT")
    }
    env.update({f"{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()})
    env.update({"INGEST_HTTP_PORT": "0", "PROFILE_HTTP_PORT": "0", "OTEL_TRACES_EXPORTER": "none"})
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.shared.cli", "migrate", cwd=tmp_path, env=env
    )
    assert await migrate.wait() == 0
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.dev_runner", cwd=tmp_path, env=env
    )
    try:
        addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        for address in addresses.values():
            await wait_serving(address)
        keys = json.loads((tmp_path / "var" / "demo-workspace.json").read_text())
        yield addresses, keys
    finally:
        runner.terminate()
        assert await asyncio.wait_for(runner.wait(), 20) == 0
    assert (tmp_path / "var" / "audiences.db").exists()


async def test_all_five_serve_on_the_embedded_default(embedded) -> None:  # type: ignore[no-untyped-def]
    addresses, keys = embedded
    async with grpc.aio.insecure_channel(addresses["ingest"]) as channel:
        workspace = await admin_pb2_grpc.AdminServiceStub(channel).GetWorkspace(
            admin_pb2.GetWorkspaceRequest(), metadata=bearer(keys["admin_key"])
        )
        assert workspace.id == keys["workspace_id"] and workspace.name == "demo"
        sent = await ingest_pb2_grpc.IngestServiceStub(channel).Batch(
            ingest_pb2.BatchRequest(
                events=[
                    ingest_pb2.Event(
                        message_id="embedded-1",
                        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
                        user_id="ada",
                        traits=orjson.dumps({"plan": "pro"}),
                    )
                ]
            ),
            metadata=bearer(keys["ingest_key"]),
        )
        assert sent.accepted == 1
    async with grpc.aio.insecure_channel(addresses["profile"]) as channel:
        profile = await profile_pb2_grpc.ProfileServiceStub(channel).GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=common_pb2.Identifier(type="user_id", value="ada")
            ),
            metadata=bearer(keys["profile_key"]),
        )
        assert orjson.loads(profile.traits) == {"plan": "pro"}
