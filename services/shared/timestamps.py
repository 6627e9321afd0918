"""google.protobuf.Timestamp <-> integer microseconds since the epoch.

Arithmetic rather than a detour through datetime: servicers convert many timestamps
per response (audience entries, timelines), so this stays cheap on hot paths.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from services.shared.clock import US_PER_SECOND


def timestamp_from_us(value_us: int) -> Timestamp:
    """A Timestamp for microseconds since the epoch (negative values round down)."""
    seconds, micros = divmod(value_us, US_PER_SECOND)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def us_from_timestamp(stamp: Timestamp) -> int:
    """Microseconds since the epoch of a Timestamp (sub-microsecond nanos truncated)."""
    return stamp.seconds * US_PER_SECOND + stamp.nanos // 1000
