"""The request path's per-event translation on its own: protobuf -> RawEvent, the string
rules of validation, and Outcome -> protobuf results. Each is written for speed
(positional constructors, a combined fast check, dict-built results); these tests pin
that the fast forms give exactly what the plain ones did."""

import pytest
from audiences.v1 import common_pb2, ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.ingest.model import BatchOutcome, Outcome, RawEvent, Status, Violation
from services.ingest.server import _batch_response, to_raw, to_result
from services.ingest.validation import MAX_STRING_CHARS, validate

pytestmark = pytest.mark.unit
NOW = 1_735_689_600_000_000


def test_to_raw_puts_every_field_where_it_belongs() -> None:
    message = ingest_pb2.Event(
        type=ingest_pb2.EVENT_TYPE_GROUP,
        message_id="m",
        user_id="u",
        anonymous_id="a",
        event="e",
        name="n",
        timestamp=Timestamp(seconds=1_700_000_000, nanos=123_456_789),
        properties=b'{"p":1}',
        traits=b'{"t":2}',
        context=b'{"c":3}',
        group_id="g",
        previous_id="p",
        external_ids=[common_pb2.Identifier(type="crm", value="42")],
    )
    assert to_raw(message) == RawEvent(
        type="group",
        message_id="m",
        user_id="u",
        anonymous_id="a",
        event="e",
        name="n",
        timestamp_us=1_700_000_000_123_456,
        timestamp_error=None,
        properties=b'{"p":1}',
        traits=b'{"t":2}',
        context=b'{"c":3}',
        group_id="g",
        previous_id="p",
        external_ids=[("crm", "42")],
    )


def test_to_raw_defaults_unknown_types_and_the_batch_context() -> None:
    bare = to_raw(ingest_pb2.Event(type=99), b'{"batch":1}')  # type: ignore[arg-type]
    assert bare == RawEvent(type="unknown (99)", context=b'{"batch":1}')
    assert not bare.external_ids
    assert to_raw(ingest_pb2.Event(), event_type="track").type == "track"
    bad_stamp = to_raw(ingest_pb2.Event(timestamp=Timestamp(seconds=1, nanos=-1)))
    assert (bad_stamp.timestamp_us, bad_stamp.timestamp_error) == (None, "not a valid timestamp")


@pytest.mark.parametrize(
    "field", ["message_id", "user_id", "anonymous_id", "event", "name", "group_id", "previous_id"]
)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("x" * (MAX_STRING_CHARS + 1), f"longer than {MAX_STRING_CHARS} characters"),
        ("a\x00b", "contains a NUL character"),
        ("bad \udcff", "not valid UTF-8"),
    ],
)
def test_each_string_field_is_checked(field: str, value: str, reason: str) -> None:
    fields = {"type": "track", "event": "E", "user_id": "u", field: value}
    event, violations = validate(RawEvent(**fields), 3, "events[3]", NOW)
    assert event is None
    assert [(v.index, v.field, v.reason) for v in violations] == [(3, f"events[3].{field}", reason)]


def test_long_or_non_ascii_strings_within_the_rules_pass() -> None:
    # Together over the limit, each one within it; and text beyond ASCII.
    long = "y" * MAX_STRING_CHARS
    event, violations = validate(
        RawEvent(
            type="page", message_id=long, user_id=long, anonymous_id="é" * 200, name="Ünïcode"
        ),
        0,
        "event",
        NOW,
    )
    assert violations == []
    assert event is not None and event.name == "Ünïcode" and event.anonymous_id == "é" * 200


def _result_by_message(outcome: Outcome) -> ingest_pb2.EventResult:
    """An EventResult set field by field: what the dict-built results must equal."""
    result = ingest_pb2.EventResult(
        message_id=outcome.message_id,
        status={
            Status.ACCEPTED: ingest_pb2.EVENT_STATUS_ACCEPTED,
            Status.DUPLICATE: ingest_pb2.EVENT_STATUS_DUPLICATE,
            Status.REJECTED: ingest_pb2.EVENT_STATUS_REJECTED,
        }[outcome.status],
        profile_id="" if outcome.profile_id is None else str(outcome.profile_id),
        seq=outcome.seq or 0,
    )
    for v in outcome.violations:
        result.violations.add(index=v.index, field=v.field, reason=v.reason)
    return result


def test_results_are_the_same_messages_and_bytes() -> None:
    outcomes = [
        Outcome(0, "m0", Status.ACCEPTED, profile_id=7, seq=12),
        Outcome(1, "m1", Status.DUPLICATE, profile_id=8, seq=3),
        Outcome(
            2,
            "m2",
            Status.REJECTED,
            [Violation(2, "events[2].user_id", "r1"), Violation(2, "events[2].event", "r2")],
        ),
        Outcome(3, "m3", Status.ACCEPTED, profile_id=0, seq=0),
    ]
    expected = [_result_by_message(o) for o in outcomes]
    assert [to_result(o) for o in outcomes] == expected
    response = _batch_response(BatchOutcome(outcomes))
    assert response.SerializeToString() == ingest_pb2.BatchResponse(
        results=expected, accepted=2, duplicates=1, rejected=1
    ).SerializeToString(deterministic=True)
