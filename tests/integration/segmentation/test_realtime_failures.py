"""One workspace whose realtime evaluation fails does not stop the others: its entries
stay pending (not acknowledged) and are evaluated when taken over again once the cause
is gone. Real Postgres and Redis; ingest's own ingestor feeds the stream."""

from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.segmentation.tables import audience_versions
from services.shared import streams
from services.shared.server import Resources

pytestmark = pytest.mark.integration

VIEWED = {"event": {"name": "Viewed"}}


async def test_a_failing_workspace_keeps_its_entries_pending(resources: Resources) -> None:
    clock = resources.clock
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    settings = RealtimeSettings(consumer="c", block_ms=None, claim_idle_ms=0)
    worker = make_worker(resources, settings)
    await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, settings.group)

    audiences = {}
    for name in ("broken", "healthy"):
        ws, _, _ = await resources.keys.create_workspace(name)
        audiences[name] = await segmentation.create_audience(
            ws,
            key="viewers",
            name="",
            description="",
            definition=orjson.dumps(VIEWED),
            account_level=False,
            skip_backfill=True,
            realtime=True,
        )
        await ingestor.ingest(
            ws,
            [RawEvent(type="track", message_id="m", user_id="ann", event="Viewed")],
        )
    broken = audiences["broken"].audience_id
    # A stored definition the worker cannot read (as after a bad manual edit).
    async with resources.engine.begin() as c:
        await c.execute(
            sa.update(audience_versions)
            .where(audience_versions.c.audience_id == broken)
            .values(definition={"bogus": 1})
        )

    read = await streams.read_groups(
        resources.redis, settings.streams, settings.group, "c", 100, None
    )
    assert len(read) == 2
    await worker.process(read)
    assert len(await store.members(audiences["healthy"].audience_id)) == 1
    assert await store.members(broken) == {}
    pending = await resources.redis.xpending(streams.EVENTS_STREAM, settings.group)
    assert pending["pending"] == 1  # the broken workspace's entry, not acknowledged

    async with resources.engine.begin() as c:
        await c.execute(
            sa.update(audience_versions)
            .where(audience_versions.c.audience_id == broken)
            .values(definition=VIEWED)
        )
    assert await worker.claim_stale() == 1
    assert len(await store.members(broken)) == 1
    pending = await resources.redis.xpending(streams.EVENTS_STREAM, settings.group)
    assert pending["pending"] == 0
