"""Steps the sync tests share: a destination and a sync through the API."""

from __future__ import annotations

from audiences.v1 import sync_pb2
from redis.asyncio import Redis

from services.shared.streams import CHANGES_STREAM
from tests.helpers.syncs import create_webhook_sync
from tests.integration.sync.conftest import SyncApi
from tests.integration.sync.support import T0, MembershipLog


async def webhook_sync(
    api: SyncApi,
    url: str,
    secret: str,
    audience_key: str,
    batch_size: int = 2,
    timeout_seconds: float = 5,
    max_removal_fraction: float = 0,
) -> sync_pb2.Sync:
    """A webhook destination at `url` and a one-time email sync of the audience to it."""
    return await create_webhook_sync(
        api.stub,
        api.metadata,
        url,
        secret,
        audience_key,
        id_type="email",
        batch_size=batch_size,
        timeout_seconds=timeout_seconds,
        max_removal_fraction=max_removal_fraction,
    )


async def audience_sync(
    api: SyncApi,
    destination_id: str,
    audience_key: str,
    id_type: str,
    max_removal_fraction: float = 0,
) -> sync_pb2.Sync:
    """A one-time sync of the audience to the destination, naming people by `id_type`."""
    return await api.stub.CreateSync(
        sync_pb2.CreateSyncRequest(
            sync=sync_pb2.Sync(
                destination_id=destination_id,
                source=sync_pb2.SYNC_SOURCE_AUDIENCE,
                source_key=audience_key,
                id_type=id_type,
                cadence=sync_pb2.SYNC_CADENCE_ONE_TIME,
                max_removal_fraction=max_removal_fraction,
            )
        ),
        metadata=api.metadata,
    )


async def run(api: SyncApi, sync_id: str) -> sync_pb2.SyncRun:
    """RunSync."""
    return await api.stub.RunSync(sync_pb2.RunSyncRequest(id=sync_id), metadata=api.metadata)


async def get_sync(api: SyncApi, sync_id: str) -> sync_pb2.Sync:
    """GetSync."""
    return await api.stub.GetSync(sync_pb2.GetSyncRequest(id=sync_id), metadata=api.metadata)


async def announced_change(
    log: MembershipLog,
    redis: Redis,
    audience: tuple[int, str],
    pid: int,
    entered: bool = True,
    announce: bool = True,
) -> int:
    """A change committed to the log, then (unless `announce` is false: its entry
    lost) announced on `stream:changes` as the realtime worker does; its seq."""
    audience_id, audience_key = audience
    seq = await log.change(audience_id, pid, entered=entered)
    if announce:
        await redis.xadd(
            CHANGES_STREAM,
            {
                "kind": "entered" if entered else "exited",
                "workspace_id": log.ws,
                "seq": seq,
                "audience_id": audience_id,
                "audience_key": audience_key,
                "profile_id": pid,
                "at_us": T0,
                "version": 1,
            },
        )
    return seq
