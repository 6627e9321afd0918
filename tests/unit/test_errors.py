"""Service errors carry their gRPC code and BadRequest field violations."""

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.shared.errors import FieldViolation, InvalidArgument, NotFound, invalid

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
