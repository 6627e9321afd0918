"""SyncService servicer: translates between protobuf and the sync domain (service.py),
nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from audiences.v1 import sync_pb2, sync_pb2_grpc

from services.shared.auth import current_workspace
from services.shared.timestamps import timestamp_from_us
from services.sync import export
from services.sync.model import (
    AMPLITUDE,
    AUDIENCE,
    BRAZE,
    COMPUTED_TRAIT,
    DAILY,
    EVENTS,
    FILE,
    HOURLY,
    ONE_TIME,
    PREDICTION,
    REALTIME,
    RECOMMENDATION,
    WEBHOOK,
    DeadLetter,
    Destination,
    DestinationInput,
    Run,
    Sync,
    SyncInput,
)
from services.sync.service import SyncService

_KINDS = {
    sync_pb2.DESTINATION_KIND_WEBHOOK: WEBHOOK,
    sync_pb2.DESTINATION_KIND_FILE: FILE,
    sync_pb2.DESTINATION_KIND_BRAZE: BRAZE,
    sync_pb2.DESTINATION_KIND_AMPLITUDE: AMPLITUDE,
}
_KIND_ENUMS = {v: k for k, v in _KINDS.items()}
_CADENCES = {
    sync_pb2.SYNC_CADENCE_ONE_TIME: ONE_TIME,
    sync_pb2.SYNC_CADENCE_HOURLY: HOURLY,
    sync_pb2.SYNC_CADENCE_DAILY: DAILY,
    sync_pb2.SYNC_CADENCE_REALTIME: REALTIME,
}
_CADENCE_ENUMS = {v: k for k, v in _CADENCES.items()}
_SOURCES = {
    sync_pb2.SYNC_SOURCE_AUDIENCE: AUDIENCE,
    sync_pb2.SYNC_SOURCE_COMPUTED_TRAIT: COMPUTED_TRAIT,
    sync_pb2.SYNC_SOURCE_PREDICTION: PREDICTION,
    sync_pb2.SYNC_SOURCE_RECOMMENDATION: RECOMMENDATION,
    sync_pb2.SYNC_SOURCE_EVENTS: EVENTS,
}
_SOURCE_ENUMS = {v: k for k, v in _SOURCES.items()}
_FORMATS = {
    sync_pb2.EXPORT_FORMAT_UNFORMATTED: export.UNFORMATTED,
    sync_pb2.EXPORT_FORMAT_FORMATTED: export.FORMATTED,
    sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN: export.SINGLE_COLUMN,
}


def _destination_input(d: sync_pb2.Destination) -> DestinationInput:
    return DestinationInput(
        name=d.name,
        kind=_KINDS.get(d.kind, ""),
        base_url=d.base_url,
        directory=d.directory,
        file_format=d.file_format,
        secret=d.secret,
        rate_limit_per_second=d.rate_limit_per_second,
        batch_size=d.batch_size,
        timeout_seconds=d.timeout_seconds,
        options=dict(d.options),
    )


def _destination(d: Destination) -> sync_pb2.Destination:
    # The secret is write-only: only whether there is one goes back.
    return sync_pb2.Destination(
        id=d.id,
        name=d.name,
        kind=_KIND_ENUMS[d.kind],
        base_url=d.base_url,
        directory=d.directory,
        file_format=d.file_format,
        rate_limit_per_second=d.rate_limit_per_second,
        has_secret=d.secret is not None,
        created_at=timestamp_from_us(d.created_at_us),
        batch_size=d.batch_size,
        timeout_seconds=d.timeout_seconds,
        options=dict(d.options),
    )


def _sync_input(s: sync_pb2.Sync) -> SyncInput:
    return SyncInput(
        destination_id=s.destination_id,
        source=_SOURCES.get(s.source, str(s.source)),
        source_key=s.source_key,
        id_type=s.id_type,
        cadence=_CADENCES.get(s.cadence, ""),
        max_removal_fraction=s.max_removal_fraction,
        paused=s.paused,
        active_within_days=s.active_within_days,
        exclude_holdout=s.exclude_holdout,
        item_metadata=s.item_metadata,
        event_types=tuple(s.event_types),
        event_names=tuple(s.event_names),
    )


def _sync(s: Sync) -> sync_pb2.Sync:
    out = sync_pb2.Sync(
        id=s.id,
        destination_id=s.destination_id,
        source=_SOURCE_ENUMS[s.source],
        source_key=s.source_key,
        cadence=_CADENCE_ENUMS[s.cadence],
        cursor=s.cursor,
        paused=s.paused,
        paused_reason=s.paused_reason,
        max_removal_fraction=s.max_removal_fraction,
        created_at=timestamp_from_us(s.created_at_us),
        id_type=s.id_type,
        active_within_days=s.active_within_days,
        cursor_profile_id=s.cursor_profile_id,
        event_types=list(s.event_types),
        event_names=list(s.event_names),
        exclude_holdout=s.exclude_holdout,
        item_metadata=s.item_metadata,
    )
    if s.next_run_at_us is not None:
        out.next_run_at.CopyFrom(timestamp_from_us(s.next_run_at_us))
    return out


def _dead_letter(d: DeadLetter) -> sync_pb2.DeadLetter:
    out = sync_pb2.DeadLetter(
        id=d.id,
        idempotency_key=d.idempotency_key,
        first_seq=d.first_seq,
        last_seq=d.last_seq,
        status_code=d.status_code,
        response_body=d.response_body,
        changes=d.changes,
        created_at=timestamp_from_us(d.created_at_us),
    )
    if d.redriven_at_us is not None:
        out.redriven_at.CopyFrom(timestamp_from_us(d.redriven_at_us))
    return out


def _run(r: Run) -> sync_pb2.SyncRun:
    out = sync_pb2.SyncRun(
        id=r.id,
        sync_id=r.sync_id,
        status=r.status,
        added=r.added,
        removed=r.removed,
        skipped=r.skipped,
        failed=r.failed,
        batches=r.batches,
        retries=r.retries,
        from_cursor=r.from_cursor,
        to_cursor=r.to_cursor,
        error=r.error,
        started_at=timestamp_from_us(r.started_at_us),
        dead_letters=[_dead_letter(d) for d in r.dead_letters],
    )
    if r.finished_at_us is not None:
        out.finished_at.CopyFrom(timestamp_from_us(r.finished_at_us))
        out.duration_ms = (r.finished_at_us - r.started_at_us) // 1000
    return out


class SyncServiceServicer(sync_pb2_grpc.SyncServiceServicer):
    """The sync RPCs."""

    def __init__(self, service: SyncService) -> None:
        self._service = service

    async def CreateDestination(self, request: Any, context: Any) -> sync_pb2.Destination:
        return _destination(
            await self._service.create_destination(
                current_workspace(), _destination_input(request.destination)
            )
        )

    async def GetDestination(self, request: Any, context: Any) -> sync_pb2.Destination:
        return _destination(await self._service.get_destination(current_workspace(), request.id))

    async def ListDestinations(
        self, request: Any, context: Any
    ) -> sync_pb2.ListDestinationsResponse:
        found, token = await self._service.list_destinations(
            current_workspace(), request.page_token, request.page_size
        )
        return sync_pb2.ListDestinationsResponse(
            destinations=[_destination(d) for d in found], next_page_token=token
        )

    async def UpdateDestination(self, request: Any, context: Any) -> sync_pb2.Destination:
        return _destination(
            await self._service.update_destination(
                current_workspace(), request.destination.id, _destination_input(request.destination)
            )
        )

    async def DeleteDestination(
        self, request: Any, context: Any
    ) -> sync_pb2.DeleteDestinationResponse:
        await self._service.delete_destination(current_workspace(), request.id)
        return sync_pb2.DeleteDestinationResponse()

    async def CreateSync(self, request: Any, context: Any) -> sync_pb2.Sync:
        return _sync(
            await self._service.create_sync(current_workspace(), _sync_input(request.sync))
        )

    async def GetSync(self, request: Any, context: Any) -> sync_pb2.Sync:
        return _sync(await self._service.get_sync(current_workspace(), request.id))

    async def ListSyncs(self, request: Any, context: Any) -> sync_pb2.ListSyncsResponse:
        found, token = await self._service.list_syncs(
            current_workspace(), request.page_token, request.page_size
        )
        return sync_pb2.ListSyncsResponse(syncs=[_sync(s) for s in found], next_page_token=token)

    async def UpdateSync(self, request: Any, context: Any) -> sync_pb2.Sync:
        return _sync(
            await self._service.update_sync(
                current_workspace(), request.sync.id, _sync_input(request.sync)
            )
        )

    async def DeleteSync(self, request: Any, context: Any) -> sync_pb2.DeleteSyncResponse:
        await self._service.delete_sync(current_workspace(), request.id)
        return sync_pb2.DeleteSyncResponse()

    async def RunSync(self, request: Any, context: Any) -> sync_pb2.SyncRun:
        return _run(await self._service.run_sync(current_workspace(), request.id))

    async def ListSyncRuns(self, request: Any, context: Any) -> sync_pb2.ListSyncRunsResponse:
        found, token = await self._service.list_runs(
            current_workspace(), request.sync_id, request.page_token, request.page_size
        )
        return sync_pb2.ListSyncRunsResponse(runs=[_run(r) for r in found], next_page_token=token)

    async def RedriveDeadLetters(self, request: Any, context: Any) -> sync_pb2.SyncRun:
        return _run(
            await self._service.redrive(
                current_workspace(), request.sync_id, list(request.dead_letter_ids)
            )
        )

    async def ExportAudience(
        self, request: Any, context: Any
    ) -> AsyncIterator[sync_pb2.ExportChunk]:
        total, pieces = await self._service.export(
            current_workspace(),
            request.audience_key,
            _FORMATS.get(request.format, ""),
            request.id_type,
            request.raw,
        )
        async for piece in pieces:
            yield sync_pb2.ExportChunk(
                csv=piece.csv, rows=piece.rows, members_done=piece.members_done, members_total=total
            )
