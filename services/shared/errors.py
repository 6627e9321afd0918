"""Errors that know their gRPC status, and their translation into rich statuses.

Domain code raises these; one interceptor (services.shared.server) turns them into
`context.abort` with google.rpc details, so servicers need no try/except ladders and
clients get machine-readable field violations. Unexpected exceptions become INTERNAL
with a generic message: exception text is never sent to clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: where (e.g. ``events[3].timestamp``) and why."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of errors that map to a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations)

    def to_status(self) -> grpc.Status:
        """A grpc.Status with google.rpc.Status details in the trailing metadata."""
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(bad_request)
            status.details.append(detail)
        return rpc_status.to_status(status)


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


# Database errors (SQLSTATE) that only a request's values cause: Postgres refuses a NUL
# in text, text longer than its column, a number past its type, a date past its range.
_VALUE_REFUSED = {
    "22021": "a text value contains a NUL character or invalid UTF-8",
    "22P05": "a text value contains a character the database cannot store",
    "22001": "a text value is longer than its field allows",
    "22003": "a number is out of the range its field allows",
    "22008": "a date or time is out of range",
}


def refused_value(error: BaseException) -> InvalidArgument | None:
    """INVALID_ARGUMENT for a database error caused by a value the request carried.

    A safety net under each service's own validation (which names the field): a value
    that still reaches the database and is refused there is the client's error, not an
    INTERNAL one. Recognised by SQLSTATE on the driver's error (asyncpg) or on
    SQLAlchemy's wrapper of it; None for every other error.
    """
    sqlstate = getattr(error, "sqlstate", None) or getattr(
        getattr(error, "orig", None), "sqlstate", None
    )
    reason = _VALUE_REFUSED.get(sqlstate) if isinstance(sqlstate, str) else None
    return None if reason is None else InvalidArgument(f"request: {reason}")


def invalid(field: str, description: str) -> InvalidArgument:
    """An INVALID_ARGUMENT naming one bad field."""
    return InvalidArgument(f"{field}: {description}", [FieldViolation(field, description)])


def too_long(field: str, value: str, limit: int) -> FieldViolation | None:
    """A violation when `value` has more than the `limit` characters its column holds
    (so the caller hears which field, not a database error)."""
    if len(value) <= limit:
        return None
    return FieldViolation(field, f"must be at most {limit} characters; got {len(value)}")


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations a client received (empty when none)."""
    # A client's RpcError is also its call (with the trailing metadata); the stub wants
    # a grpc.Call.
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return found
