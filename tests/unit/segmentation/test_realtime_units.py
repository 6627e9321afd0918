"""Pure parts of the realtime worker: which profiles stream entries touch, and at which
offsets from an event's timestamp the realtime definitions can change their answer."""

from __future__ import annotations

import pytest

from services.segmentation.language import parse_audience, parse_computed_trait
from services.segmentation.realtime.schedule import boundary_offsets
from services.segmentation.realtime.touches import touched_profiles
from services.shared.clock import US_PER_DAY
from services.shared.streams import StreamEntry

pytestmark = pytest.mark.unit


def _entry(n: int, **fields: str) -> StreamEntry:
    return StreamEntry(f"{n}-0", {k.encode(): v.encode() for k, v in fields.items()})


def test_events_and_merges_touch_their_profiles_with_the_latest_trace() -> None:
    touched = touched_profiles(
        [
            _entry(1, kind="event", workspace_id="a", profile_id="7", traceparent="t1"),
            _entry(2, kind="event", workspace_id="a", profile_id="7", traceparent="t2"),
            _entry(3, kind="merge", workspace_id="a", survivor_id="7", merged_id="9"),
            _entry(4, kind="event", workspace_id="b", profile_id="1"),
        ]
    )
    assert touched["a"].profiles == {7: {}, 9: {}}
    assert touched["b"].profiles == {1: {}}
    only_events = touched_profiles(
        [
            _entry(1, kind="event", workspace_id="a", profile_id="7", traceparent="t1"),
            _entry(2, kind="event", workspace_id="a", profile_id="7", traceparent="t2"),
        ]
    )
    assert only_events["a"].profiles == {7: {"traceparent": "t2"}}


def test_malformed_entries_touch_nothing() -> None:
    touched = touched_profiles(
        [
            _entry(1, kind="event", profile_id="7"),  # no workspace
            _entry(2, kind="event", workspace_id="a", profile_id="x"),
            _entry(3, kind="something", workspace_id="a", profile_id="7"),
        ]
    )
    assert {ws: t.profiles for ws, t in touched.items()} == {"a": {}}


def test_offsets_are_the_window_edges_and_the_event_itself() -> None:
    audiences = [
        parse_audience({"event": {"name": "Viewed", "window": {"within_days": 7}}}),
        parse_audience(
            {
                "not": {
                    "event": {
                        "name": "Ordered",
                        "type": "track",
                        "window": {"between_days": [2, 30]},
                    }
                }
            }
        ),
        parse_audience(
            {
                "funnel": {
                    "steps": [{"name": "Viewed"}, {"name": "Paid"}],
                    "within_seconds": 3600,
                    "window": {"within_days": 1},
                }
            }
        ),
    ]
    computed = [parse_computed_trait({"type": "event_count", "event": "Opened"})]
    assert boundary_offsets(audiences, computed) == {
        ("track", "Viewed"): {0, 7 * US_PER_DAY, US_PER_DAY},
        ("track", "Ordered"): {0, 2 * US_PER_DAY, 30 * US_PER_DAY},
        # A later funnel step only comes into view; within_seconds flips nothing.
        ("track", "Paid"): {0},
        ("track", "Opened"): {0},
    }
