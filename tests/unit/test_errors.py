"""Service errors carry their gRPC code and BadRequest field violations."""

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.shared.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    invalid,
    refused_value,
)

pytestmark = pytest.mark.unit


def test_invalid_argument_carries_field_violations() -> None:
    status = InvalidArgument(
        "2 bad fields", [FieldViolation("a.b", "must be set"), FieldViolation("c", "too big")]
    ).to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "2 bad fields"
    ((name, blob),) = status.trailing_metadata
    assert name == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(blob)
    bad_request = error_details_pb2.BadRequest()
    rich.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("a.b", "must be set"),
        ("c", "too big"),
    ]


def test_invalid_names_the_field() -> None:
    error = invalid("events[3].timestamp", "before 2000-01-01")
    assert error.message == "events[3].timestamp: before 2000-01-01"
    assert error.violations == [FieldViolation("events[3].timestamp", "before 2000-01-01")]


def test_not_found_has_no_details() -> None:
    status = NotFound("no such audience").to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND
    rich = status_pb2.Status.FromString(status.trailing_metadata[0][1])
    assert list(rich.details) == []


class _DriverError(Exception):
    """Stands in for asyncpg's errors: they carry the SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


class _WrappedError(Exception):
    """Stands in for SQLAlchemy's DBAPIError: the driver's error as `orig`."""

    def __init__(self, orig: Exception) -> None:
        super().__init__("wrapped")
        self.orig = orig


@pytest.mark.parametrize("sqlstate", ["22021", "22P05", "22001", "22003", "22008"])
def test_values_the_database_refuses_are_invalid_arguments(sqlstate: str) -> None:
    for error in (_DriverError(sqlstate), _WrappedError(_DriverError(sqlstate))):
        refused = refused_value(error)
        assert isinstance(refused, InvalidArgument)
        assert refused.message.startswith("request: ")


@pytest.mark.parametrize("sqlstate", ["22012", "23505", "40001", "57014"])
def test_other_database_errors_stay_unmapped(sqlstate: str) -> None:
    # Division by zero, a unique violation, serialization failure, cancellation: ours.
    assert refused_value(_DriverError(sqlstate)) is None
    assert refused_value(ValueError("no sqlstate")) is None
