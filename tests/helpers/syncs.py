"""Creating a webhook destination, and an audience or event sync to it through the Sync API, as
the sync tests, the end-to-end tests and the benchmarks all do."""

from __future__ import annotations

from audiences.v1 import sync_pb2, sync_pb2_grpc

from tests.helpers.waiting import eventually


async def create_webhook_destination(
    stub: sync_pb2_grpc.SyncServiceStub,
    metadata: tuple[tuple[str, str], ...],
    url: str,
    secret: str,
    *,
    batch_size: int = 0,
    timeout_seconds: float = 0,
) -> sync_pb2.Destination:
    """A webhook destination named "hook" at `url` signing with `secret` (0 for a
    setting: the service's default)."""
    return await stub.CreateDestination(
        sync_pb2.CreateDestinationRequest(
            destination=sync_pb2.Destination(
                name="hook",
                kind=sync_pb2.DESTINATION_KIND_WEBHOOK,
                base_url=url,
                secret=secret,
                batch_size=batch_size,
                timeout_seconds=timeout_seconds,
            )
        ),
        metadata=metadata,
    )


async def create_webhook_sync(
    stub: sync_pb2_grpc.SyncServiceStub,
    metadata: tuple[tuple[str, str], ...],
    url: str,
    secret: str,
    audience_key: str,
    *,
    id_type: str = "user_id",
    cadence: sync_pb2.SyncCadence.ValueType = sync_pb2.SYNC_CADENCE_ONE_TIME,
    batch_size: int = 0,
    timeout_seconds: float = 0,
    max_removal_fraction: float = 0,
    exclude_holdout: bool = False,
    active_within_days: int = 0,
) -> sync_pb2.Sync:
    """A webhook destination at `url` signing with `secret`, and a sync of the audience
    to it naming people by `id_type` (0 for a setting: the service's default)."""
    destination = await create_webhook_destination(
        stub, metadata, url, secret, batch_size=batch_size, timeout_seconds=timeout_seconds
    )
    return await stub.CreateSync(
        sync_pb2.CreateSyncRequest(
            sync=sync_pb2.Sync(
                destination_id=destination.id,
                source=sync_pb2.SYNC_SOURCE_AUDIENCE,
                source_key=audience_key,
                id_type=id_type,
                cadence=cadence,
                max_removal_fraction=max_removal_fraction,
                exclude_holdout=exclude_holdout,
                active_within_days=active_within_days,
            )
        ),
        metadata=metadata,
    )


async def create_realtime_event_sync(
    stub: sync_pb2_grpc.SyncServiceStub,
    metadata: tuple[tuple[str, str], ...],
    destination_id: str,
) -> sync_pb2.Sync:
    """A realtime sync of every event to the destination, people named by user_id; it
    returns once the sync's first run succeeded (its consumer groups exist on every
    event stream shard, so whatever is sent from then on is forwarded)."""
    sync = await stub.CreateSync(
        sync_pb2.CreateSyncRequest(
            sync=sync_pb2.Sync(
                destination_id=destination_id,
                source=sync_pb2.SYNC_SOURCE_EVENTS,
                id_type="user_id",
                cadence=sync_pb2.SYNC_CADENCE_REALTIME,
            )
        ),
        metadata=metadata,
    )

    async def started() -> bool:
        runs = await stub.ListSyncRuns(
            sync_pb2.ListSyncRunsRequest(sync_id=sync.id), metadata=metadata
        )
        return any(r.status == "succeeded" for r in runs.runs)

    await eventually(started, 20, "the event sync's groups on every shard")
    return sync
