"""IngestService servicer: translates between protobuf and the Ingestor, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from audiences.v1 import ingest_pb2, ingest_pb2_grpc

from services.ingest.ingestor import Ingestor
from services.ingest.model import BatchOutcome, Outcome, RawEvent, Status
from services.ingest.validation import check_request_size
from services.shared.auth import current_workspace

_TYPES = {
    ingest_pb2.EVENT_TYPE_TRACK: "track",
    ingest_pb2.EVENT_TYPE_IDENTIFY: "identify",
    ingest_pb2.EVENT_TYPE_PAGE: "page",
    ingest_pb2.EVENT_TYPE_SCREEN: "screen",
    ingest_pb2.EVENT_TYPE_GROUP: "group",
    ingest_pb2.EVENT_TYPE_ALIAS: "alias",
}
_STATUSES = {
    Status.ACCEPTED: ingest_pb2.EVENT_STATUS_ACCEPTED,
    Status.DUPLICATE: ingest_pb2.EVENT_STATUS_DUPLICATE,
    Status.REJECTED: ingest_pb2.EVENT_STATUS_REJECTED,
}
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the Timestamp range
# Their results are given as dicts (see _result_fields), which the typed stubs do not
# describe.
_BatchResponse: Callable[..., ingest_pb2.BatchResponse] = ingest_pb2.BatchResponse
_StreamEventsResponse: Callable[..., ingest_pb2.StreamEventsResponse] = (
    ingest_pb2.StreamEventsResponse
)


def to_raw(message: ingest_pb2.Event, batch_context: bytes = b"", event_type: str = "") -> RawEvent:
    """A protobuf Event as a transport-neutral RawEvent."""
    # Each protobuf field is read once: an attribute read costs 0.1-0.35 us here, about
    # as much as the rest of this function per field.
    timestamp_us: int | None = None
    timestamp_error: str | None = None
    if message.HasField("timestamp"):
        stamp = message.timestamp
        seconds, nanos = stamp.seconds, stamp.nanos
        if not 0 <= nanos < 1_000_000_000 or abs(seconds) > _MAX_TIMESTAMP_SECONDS:
            timestamp_error = "not a valid timestamp"
        else:
            timestamp_us = seconds * 1_000_000 + nanos // 1000
    if not event_type:
        number = message.type
        event_type = _TYPES.get(number) or f"unknown ({number})"
    external_ids = message.external_ids
    return RawEvent(
        event_type,
        message.message_id,
        message.user_id,
        message.anonymous_id,
        message.event,
        message.name,
        timestamp_us,
        timestamp_error,
        message.properties or None,
        message.traits or None,
        message.context or batch_context or None,
        message.group_id,
        message.previous_id,
        [(i.type, i.value) for i in external_ids] if external_ids else (),
    )


def _result_fields(outcome: Outcome) -> dict[str, Any]:
    """The fields of one event's EventResult, as constructor keywords. A response is
    built from a list of these in one call (upb makes the messages in C): building an
    EventResult per event and copying it into the response cost twice as much."""
    fields: dict[str, Any] = {
        "message_id": outcome.message_id,
        "status": _STATUSES[outcome.status],
        "profile_id": "" if outcome.profile_id is None else str(outcome.profile_id),
        "seq": outcome.seq or 0,
    }
    if outcome.violations:  # most events have none; an empty list costs ~1 us each
        fields["violations"] = [
            {"index": v.index, "field": v.field, "reason": v.reason} for v in outcome.violations
        ]
    return fields


def to_result(outcome: Outcome) -> ingest_pb2.EventResult:
    """The protobuf result of one event."""
    return ingest_pb2.EventResult(**_result_fields(outcome))


def _batch_response(outcome: BatchOutcome) -> ingest_pb2.BatchResponse:
    return _BatchResponse(
        results=[_result_fields(o) for o in outcome.outcomes],
        accepted=outcome.count(Status.ACCEPTED),
        duplicates=outcome.count(Status.DUPLICATE),
        rejected=outcome.count(Status.REJECTED),
    )


class IngestServiceServicer(ingest_pb2_grpc.IngestServiceServicer):
    """The ingest RPCs."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def _one(
        self, request: ingest_pb2.EventRequest, event_type: str
    ) -> ingest_pb2.EventResult:
        raw = to_raw(request.event, event_type=event_type)
        return to_result(await self._ingestor.ingest_one(current_workspace(), raw))

    async def Track(
        self, request: ingest_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EventResult:
        return await self._one(request, "track")

    async def Identify(
        self, request: ingest_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EventResult:
        return await self._one(request, "identify")

    async def Page(
        self, request: ingest_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EventResult:
        return await self._one(request, "page")

    async def Screen(
        self, request: ingest_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EventResult:
        return await self._one(request, "screen")

    async def Group(
        self, request: ingest_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EventResult:
        return await self._one(request, "group")

    async def Alias(
        self, request: ingest_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EventResult:
        return await self._one(request, "alias")

    async def Batch(
        self, request: ingest_pb2.BatchRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.BatchResponse:
        check_request_size(len(request.events), request.ByteSize())
        raws = [to_raw(e, request.context) for e in request.events]
        return _batch_response(await self._ingestor.ingest(current_workspace(), raws))

    async def StreamEvents(
        self,
        request_iterator: AsyncIterator[ingest_pb2.StreamEventsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_pb2.StreamEventsResponse]:
        workspace_id = current_workspace()
        async for request in request_iterator:
            check_request_size(len(request.events), request.ByteSize())
            outcome = await self._ingestor.ingest(workspace_id, [to_raw(e) for e in request.events])
            yield _StreamEventsResponse(results=[_result_fields(o) for o in outcome.outcomes])
