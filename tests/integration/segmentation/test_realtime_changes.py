"""The changes stream is a complete mirror of the change log: records committed by a
worker that died before appending them, and records of batch writers (a Recompute),
are appended by the catch-up once each, in seq order per workspace, carrying the trace
context stored with them; publishing the same records again appends nothing, and a
record that would skip an unpublished one waits for the catch-up. Real Postgres and
Redis."""

from __future__ import annotations

import orjson
import pytest

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.realtime.store import RealtimeStore
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared import streams
from services.shared.server import Resources

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def _changes(resources: Resources) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await resources.redis.xrange(streams.CHANGES_STREAM)
    ]


async def test_records_committed_but_not_appended_are_caught_up(resources: Resources) -> None:
    clock = resources.clock
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    worker = make_worker(resources, RealtimeSettings(consumer="c", block_ms=None))
    realtime = RealtimeStore(resources.engine, store)
    ws, _, _ = await resources.keys.create_workspace("changes")
    await segmentation.create_audience(
        ws,
        key="viewers",
        name="",
        description="",
        definition=orjson.dumps({"event": {"name": "Viewed", "window": {"within_days": 1}}}),
        account_level=False,
        skip_backfill=True,
        realtime=True,
    )
    await ingestor.ingest(
        ws,
        [
            RawEvent(type="track", message_id=f"m{i}", user_id=user, event="Viewed")
            for i, user in enumerate(["ann", "bo"])
        ],
    )
    pids = sorted(
        int(f[b"profile_id"]) for _, f in await resources.redis.xrange(streams.EVENTS_STREAM)
    )
    definitions = await realtime.definitions(ws)
    assert definitions is not None
    # A worker commits both entries (ann's with her event's trace) and dies before the
    # stream append.
    evaluated = await realtime.evaluate(
        ws, definitions, pids, clock.now_us(), {pids[0]: {"traceparent": TRACEPARENT}}
    )
    assert [c.seq for c in evaluated.changes] == [1, 2]
    assert await _changes(resources) == []

    assert await worker.changes.catch_up_all() == 2
    changes = await _changes(resources)
    assert [(c["seq"], c["kind"], c["profile_id"]) for c in changes] == [
        ("1", "entered", str(pids[0])),
        ("2", "entered", str(pids[1])),
    ]
    assert changes[0]["traceparent"] == TRACEPARENT
    assert "traceparent" not in changes[1]
    assert changes[0]["audience_key"] == "viewers" and changes[0]["workspace_id"] == ws
    # Caught up: again appends nothing, nor does publishing the same records again.
    assert await worker.changes.catch_up_all() == 0
    records = await realtime.log_after(ws, 0, 10)
    assert await worker.changes.publish(ws, records) == 2
    assert len(await _changes(resources)) == 2

    # A batch writer's records (a Recompute two days later: both views left the
    # window) reach the stream too, and a record published past one waits for it.
    clock.advance(2 * 86_400)
    await segmentation.recompute(ws, audience_key="viewers", as_of_us=None)
    logged = await realtime.log_after(ws, 2, 10)
    assert [r.change.kind for r in logged] == ["exited", "exited"]
    assert await worker.changes.publish(ws, logged[1:]) == 2  # seq 4 skips 3: not appended
    assert len(await _changes(resources)) == 2
    assert await worker.changes.catch_up_all() == 2
    assert [c["seq"] for c in await _changes(resources)] == ["1", "2", "3", "4"]
