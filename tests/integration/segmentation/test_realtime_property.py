"""Property: the realtime worker holds, at every checkpoint, exactly the members and
computed values batch evaluation computes at that instant, for random histories (events
in and out of order, future-dated, duplicates by name, anonymous visitors merged into a
user) and random windowed definitions, while the clock moves forward with and without
new events. Real Postgres and Redis; ingest's own ingestor and publisher feed
`stream:events`, and the worker's own process/run_due steps consume it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.segmentation.tables import computed_trait_values
from services.shared import streams

pytestmark = pytest.mark.integration

HOUR_US = 3_600_000_000
DAY_SECONDS = 86_400
_ids = itertools.count()

WINDOWS = [
    None,
    {"within_days": 0.5},
    {"within_days": 1},
    {"within_days": 2},
    # Edges no other window shares, so each must be scheduled for its own sake.
    {"between_days": [0.25, 1.5]},
    {"between_days": [0.75, 2.5]},
]


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    window = draw(st.sampled_from(WINDOWS))
    if draw(st.integers(0, 4)) == 0:
        funnel: dict[str, Any] = {
            "steps": [{"name": "A"}, {"name": "B"}],
            "within_seconds": draw(st.sampled_from([3600, 86400])),
            "completed": draw(st.booleans()),
        }
        if window is not None:
            funnel["window"] = window
        return {"funnel": funnel}
    count = {"op": draw(st.sampled_from(["gte", "eq", "lte"])), "value": draw(st.integers(0, 2))}
    event: dict[str, Any] = {"name": draw(st.sampled_from(["A", "B"])), "count": count}
    if window is not None:
        event["window"] = window
    return {"event": event}


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return draw(leaves())
    if shape == 1:
        return {"not": draw(leaves())}
    if shape == 2:
        return {"all": [draw(leaves()), draw(leaves())]}
    return {"any": [draw(leaves()), {"not": draw(leaves())}]}


# (user_id, anonymous_id): the anonymous visitor a0 may later be identified as u0.
WHO = [("u0", ""), ("u1", ""), ("", "a0"), ("", "a1")]


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[int, list[RawEvent]]]:
    """(hours the clock moves first, events then sent, timestamped relative to the new
    now: up to 4 days back, up to 20 hours ahead)."""
    out = []
    for i in range(draw(st.integers(2, 5))):
        hours = 0 if i == 0 else draw(st.integers(1, 60))
        sent = []
        for _ in range(draw(st.integers(0 if i else 1, 5))):
            kind = draw(st.sampled_from(["track", "track", "track", "identify"]))
            user, anon = draw(st.sampled_from(WHO))
            if kind == "identify":
                user, anon = "u0", draw(st.sampled_from(["", "a0"]))
            sent.append(
                RawEvent(
                    type=kind,
                    message_id=f"p{next(_ids)}",
                    user_id=user,
                    anonymous_id=anon,
                    event=draw(st.sampled_from(["A", "B"])) if kind == "track" else "",
                    timestamp_us=draw(st.integers(-96, 20)) * HOUR_US,  # relative for now
                )
            )
        out.append((hours, sent))
    return out


async def test_realtime_equals_batch_at_every_checkpoint(resources) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    clock = resources.clock
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    realtime = RealtimeSettings(consumer="property", block_ms=None)
    worker = make_worker(resources, realtime)

    def run(coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)

    async def drain() -> None:
        """Run the worker until nothing is due and the stream is consumed."""
        await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, realtime.group)
        while True:
            due = await worker.run_due()
            read = await streams.read_groups(
                resources.redis, realtime.streams, realtime.group, realtime.consumer, 500, None
            )
            if read:
                await worker.process(read)
            if not read and not due:
                return

    async def check_now(ws: str, audiences: dict[str, Any], computed: Any) -> None:
        now = clock.now_us()
        for key, definition in audiences.items():
            audience = await store.get_audience(ws, key)
            assert audience is not None
            rows = await store.members(audience.audience_id)
            held = set(rows)
            assert held == await store.evaluate_audience(ws, definition, now), (key, now)
            # The size moved by each scoped write equals a count of the rows.
            assert audience.size == len(rows), (key, now)
        expected = await store.evaluate_computed(ws, computed, now)
        cv = computed_trait_values
        async with resources.engine.connect() as c:
            rows = await c.execute(
                sa.select(cv.c.profile_id, cv.c.value).where(cv.c.workspace_id == ws)
            )
            held_values = {r.profile_id: r.value for r in rows}
        assert held_values == expected, now

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(first=trees(), second=trees(), window=st.sampled_from(WINDOWS), plan=steps())
    def check(first, second, window, plan) -> None:  # type: ignore[no-untyped-def]
        ws, _, _ = run(resources.keys.create_workspace("realtime property"))
        audiences = {"first": first, "second": second}
        for key, definition in audiences.items():
            run(
                segmentation.create_audience(
                    ws,
                    key=key,
                    name=key,
                    description="",
                    definition=orjson.dumps(definition),
                    account_level=False,
                    skip_backfill=True,
                    realtime=True,
                )
            )
        computed: dict[str, Any] = {"type": "event_count", "event": "A"}
        if window is not None:
            computed["window"] = window
        run(
            segmentation.create_computed_trait(
                ws,
                key="a_count",
                name="",
                definition=orjson.dumps(computed),
                skip_backfill=True,
                realtime=True,
            )
        )
        for hours, sent in plan:
            clock.advance(hours * 3600)
            now = clock.now_us()
            events = [
                dataclasses.replace(e, timestamp_us=now + (e.timestamp_us or 0)) for e in sent
            ]
            if events:
                run(ingestor.ingest(ws, events))
            run(drain())
            run(check_now(ws, audiences, computed))
        # Days later, with no event at all, everything has left its windows in step.
        clock.advance(4 * DAY_SECONDS)
        run(drain())
        run(check_now(ws, audiences, computed))

    await asyncio.to_thread(check)
