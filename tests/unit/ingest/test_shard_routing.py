"""How the front splits a request into parts by the shard locks they need (pure
routing logic over a fake holder look-up; docs/ingest.md, "Shards")."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.ingestor import Ingestor, key_shard
from services.ingest.model import Event, RawEvent
from services.ingest.validation import validate
from services.shared.clock import FixedClock
from services.shared.streams import shard_of_profile

pytestmark = pytest.mark.unit

SHARDS = 4
NOW_US = 1_735_689_600_000_000
WS = "ws_routing"


class Holders:
    """A store that only answers holder look-ups."""

    shards = SHARDS

    def __init__(self, holders: dict[tuple[str, str], int]) -> None:
        self.known = holders

    async def holders(
        self, workspace_id: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        return {key: self.known[key] for key in keys if key in self.known}


def event(index: int, message_id: str, user: str = "", anon: str = "") -> Event:
    raw = RawEvent(
        type="track",
        message_id=message_id,
        user_id=user,
        anonymous_id=anon,
        event="Viewed",
        timestamp_us=NOW_US - 1000,
    )
    found, violations = validate(raw, index, f"events[{index}]", NOW_US)
    assert found is not None, violations
    return found


def split(holders: dict[tuple[str, str], int], events: list[Event]) -> Any:
    front = Ingestor(Holders(holders), None, FixedClock(NOW_US))  # type: ignore[arg-type]
    return asyncio.run(front._split(WS, events))


def test_a_held_identifier_goes_to_its_holders_shard_a_new_one_to_its_own() -> None:
    known = ("user_id", "known")
    parts = split(
        {known: 4 * 7 + 2},
        [event(0, "m0", user="known"), event(1, "m1", anon="fresh")],
    )
    fresh_shard = key_shard(WS, ("anonymous_id", "fresh"), SHARDS)
    expected = {(2,): ["m0"], (fresh_shard,): ["m1"]}
    if fresh_shard == 2:
        expected = {(2,): ["m0", "m1"]}
    assert {shards: [e.message_id for e in part] for shards, part in parts} == expected


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 3)),
        min_size=1,
        max_size=25,
    ),
    st.dictionaries(st.integers(0, 5), st.integers(1, 40), max_size=4),
)
def test_parts_keep_connected_events_together_in_order(rows, held_users) -> None:  # type: ignore[no-untyped-def]
    """Every event lands in exactly one part, in request order within it; events that
    share an identifier or a holder are in the same part; a part's shards are those
    its events need."""
    holders = {("user_id", f"u{u}"): pid for u, pid in held_users.items()}
    events = []
    for index, (user, anon, repeat) in enumerate(rows):
        message_id = f"m{index}" if repeat else "same"
        events.append(event(index, message_id, user=f"u{user}", anon=f"a{anon}"))
    parts = split(holders, events)
    where = {}
    for shards, part in parts:
        assert [e.index for e in part] == sorted(e.index for e in part)
        for e in part:
            assert e.index not in where
            where[e.index] = shards
            for identifier in e.identifiers:
                holder = holders.get(identifier.key)
                need = (
                    shard_of_profile(holder, SHARDS)
                    if holder is not None
                    else key_shard(WS, identifier.key, SHARDS)
                )
                assert need in shards
    assert sorted(where) == list(range(len(events)))
    for a in events:
        for b in events:
            shared = {i.key for i in a.identifiers} & {i.key for i in b.identifiers}
            same_holder = {holders.get(i.key) for i in a.identifiers} & {
                holders.get(i.key) for i in b.identifiers
            } - {None}
            if shared or same_holder or a.message_id == b.message_id:
                assert where[a.index] == where[b.index]
