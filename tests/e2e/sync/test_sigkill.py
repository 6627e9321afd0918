"""The sync process killed (SIGKILL) while a batch is in flight loses and duplicates
nothing: the destination applied the batch but the acknowledgement never reached the
cursor, so a restarted process re-sends exactly that batch under the same idempotency
key (which the receiver drops) and then the rest, in order.

The kill is made to land mid-batch, not left to timing: the receiver holds the sixth
request open until the process is dead, then applies it.
"""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest
from audiences.v1 import sync_pb2, sync_pb2_grpc
from cryptography.fernet import Fernet

from services.dev_runner import start_processes
from services.shared.server import Resources
from tests.conftest import WorkspaceKeys
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer, channel, wait_serving
from tests.helpers.syncs import create_webhook_destination
from tests.helpers.waiting import eventually
from tests.integration.sync.support import MembershipLog, webhook

pytestmark = pytest.mark.e2e

SECRET = "killed-mid-batch"
PEOPLE = 12
HELD_REQUEST = 6


def _start(database_url: str, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OTEL_TRACES_EXPORTER": "none",
        "SYNC_SECRET_KEY": KEY,
        "SYNC_CLAIM_SECONDS": "1",  # a dead process's claim lapses quickly
        "SYNC_SCHEDULER_INTERVAL_SECONDS": "3600",
    }
    [process] = start_processes(env, {"sync": port})
    return process


KEY = Fernet.generate_key().decode()


async def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    database_url: str, redis_url: str, resources: Resources, workspace: WorkspaceKeys
) -> None:
    log = MembershipLog(resources.engine, workspace.workspace_id)
    audience = await log.audience("kill")  # empty: the first run only sets the cursor
    admin = bearer(workspace.admin)
    async with webhook(SECRET, hold_at=HELD_REQUEST) as receiver:
        port = free_port()
        process = _start(database_url, redis_url, port)
        try:
            await wait_serving(f"127.0.0.1:{port}")
            async with channel(f"127.0.0.1:{port}") as ch:
                stub = sync_pb2_grpc.SyncServiceStub(ch)
                destination = await create_webhook_destination(
                    stub, admin, receiver.url, SECRET, batch_size=1
                )
                sync = await stub.CreateSync(
                    sync_pb2.CreateSyncRequest(
                        sync=sync_pb2.Sync(
                            destination_id=destination.id,
                            source=sync_pb2.SYNC_SOURCE_AUDIENCE,
                            source_key="kill",
                            id_type="email",
                            cadence=sync_pb2.SYNC_CADENCE_ONE_TIME,
                        )
                    ),
                    metadata=admin,
                )
                assert (
                    await stub.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=admin)
                ).added == 0
                # Now the changes arrive after the cursor: one batch each.
                for i in range(PEOPLE):
                    pid = await log.profile(email=f"late{i}@example.com")
                    await log.change(audience, pid, entered=True)
                running = stub.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=admin)

                async def held() -> bool:
                    return len(receiver.requests) >= HELD_REQUEST

                await eventually(held, within=20, what="the held request to arrive")
                process.kill()  # SIGKILL: the held batch's answer will never be read
                process.wait(timeout=10)
                with pytest.raises(grpc.aio.AioRpcError):
                    await running
            receiver.release.set()  # the destination applies the batch anyway
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

        port = free_port()
        process = _start(database_url, redis_url, port)
        try:
            await wait_serving(f"127.0.0.1:{port}")
            async with channel(f"127.0.0.1:{port}") as ch:
                stub = sync_pb2_grpc.SyncServiceStub(ch)

                async def rerun() -> sync_pb2.SyncRun | None:
                    try:
                        return await stub.RunSync(
                            sync_pb2.RunSyncRequest(id=sync.id), metadata=admin
                        )
                    except grpc.aio.AioRpcError as error:
                        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                            raise
                        return None  # the dead process's claim has not lapsed yet

                resumed = await eventually(rerun, within=20, what="the claim to lapse")
                runs = await stub.ListSyncRuns(
                    sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=admin
                )
        finally:
            process.terminate()
            assert process.wait(timeout=15) == 0
    # Five batches were acknowledged before the kill: the rerun starts after them.
    assert resumed.status == "succeeded" and resumed.from_cursor == HELD_REQUEST - 1
    killed = runs.runs[1]
    assert killed.status == "failed" and "abandoned" in killed.error
    assert [c["id"] for c in receiver.applied] == [f"late{i}@example.com" for i in range(PEOPLE)]
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    repeated = [k for k in set(keys) if keys.count(k) > 1]
    assert len(repeated) == 1 and len(keys) == PEOPLE + 1  # only the held batch, once more
