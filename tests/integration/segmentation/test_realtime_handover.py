"""Creating a realtime audience backfills it from history (the batch path) and hands
it over to the worker without a gap or a double change: a profile evaluated while the
backfill ran is re-evaluated once it is live (writing nothing the backfill already
wrote), and the backfill's members leave when their windows run out, with no event of
theirs ever reaching the worker. Real Postgres and Redis; ingest's own ingestor feeds
the stream."""

from __future__ import annotations

import orjson
import pytest

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.model import BACKFILLING, LIVE
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared import streams
from services.shared.server import Resources

pytestmark = pytest.mark.integration

VIEWED_TODAY = {"event": {"name": "Viewed", "window": {"within_days": 1}}}
HOUR_US = 3_600_000_000


async def test_a_backfilled_audience_is_handed_over_without_gap_or_double_change(
    resources: Resources,
) -> None:
    clock = resources.clock
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    settings = RealtimeSettings(consumer="c", block_ms=None)
    worker = make_worker(resources, settings)
    await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, settings.group)
    ws, _, _ = await resources.keys.create_workspace("handover")
    now = clock.now_us()

    async def send(user: str, at_us: int) -> None:
        raw = RawEvent(
            type="track",
            message_id=f"{user}-{at_us}",
            user_id=user,
            event="Viewed",
            timestamp_us=at_us,
        )
        await ingestor.ingest(ws, [raw])

    async def drain() -> None:
        while True:
            read = await streams.read_groups(
                resources.redis, settings.streams, settings.group, "c", 100, None
            )
            if not read:
                return
            await worker.process(read)

    await send("bo", now - 12 * HOUR_US)  # history: bo viewed 12 hours ago
    await drain()  # no realtime audience yet: nothing to do
    # Hold the workspace's lock, as a long backfill would, so events arrive meanwhile.
    lock = segmentation._lock(ws)
    await lock.acquire()
    record = await segmentation.create_audience(
        ws,
        key="viewers",
        name="",
        description="",
        definition=orjson.dumps(VIEWED_TODAY),
        account_level=False,
        skip_backfill=False,
        realtime=True,
    )
    assert record.state == BACKFILLING
    await send("cy", now - HOUR_US)
    await drain()  # the audience is not servable yet: cy is remembered, not written
    assert await store.members(record.audience_id) == {}
    lock.release()
    await segmentation.idle()  # the backfill runs and goes live
    audience = await store.get_audience(ws, "viewers")
    assert audience is not None and audience.state == LIVE
    members = await store.members(record.audience_id)
    assert len(members) == 2

    assert await worker.handover_all() == 1
    assert await worker.handover_all() == 0  # handed over once
    changes = await store.changes_after(ws, 0, None, 100)
    assert sorted(c.kind for c in changes) == ["entered", "entered"]  # no double change

    # Time passes with no event at all: bo's view leaves the day window first.
    clock.set(now + 12 * HOUR_US)
    assert await worker.run_due() == 1
    assert len(await store.members(record.audience_id)) == 1
    clock.set(now + 23 * HOUR_US)
    assert await worker.run_due() == 1
    assert await store.members(record.audience_id) == {}
    assert await store.evaluate_audience(ws, VIEWED_TODAY, clock.now_us()) == set()
    assert sorted(c.kind for c in await store.changes_after(ws, 0, None, 100)) == [
        "entered",
        "entered",
        "exited",
        "exited",
    ]
