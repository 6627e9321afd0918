"""The realtime worker keeps a workspace's definitions and their statements between
batches, but a definition created, edited or deleted between two events takes effect
on the very next batch: the second event is evaluated against the new definitions.
Real Postgres and Redis; ingest's own ingestor feeds the stream; the worker in process,
as the other realtime tests run it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.model import LIVE
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared import streams
from services.shared.server import Resources

pytestmark = pytest.mark.integration

VIEWED = {"event": {"name": "Viewed"}}
BOUGHT = {"event": {"name": "Bought"}}


async def test_a_changed_definition_takes_effect_on_the_next_batch(
    resources: Resources,
) -> None:
    clock = resources.clock
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    settings = RealtimeSettings(consumer="c", block_ms=None)
    worker = make_worker(resources, settings)
    await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, settings.group)
    ws, _, _ = await resources.keys.create_workspace("definition cache")

    async def event(user: str, name: str) -> int:
        """One event through ingest and one batch of the worker; the profile's id."""
        raw = RawEvent(type="track", message_id=f"{user}-{name}", user_id=user, event=name)
        await ingestor.ingest(ws, [raw])
        read = await streams.read_groups(
            resources.redis, settings.streams, settings.group, "c", 100, None
        )
        assert len(read) == 1
        await worker.process(read)
        return int(read[0][1].fields[b"profile_id"])

    async def members(key: str) -> set[int]:
        audience = await store.get_audience(ws, key)
        assert audience is not None
        return set(await store.members(audience.audience_id))

    async def computed(key: str) -> dict[int, Any]:
        """The stored values of a computed trait, but for counts of 0."""
        async with resources.engine.connect() as c:
            rows = await c.exec_driver_sql(
                "SELECT profile_id, value FROM computed_trait_values"
                " WHERE workspace_id = $1 AND key = $2",
                (ws, key),
            )
            return {r[0]: r[1] for r in rows if r[1] != 0}

    await segmentation.create_audience(
        ws,
        key="shoppers",
        name="",
        description="",
        definition=orjson.dumps(VIEWED),
        account_level=False,
        skip_backfill=True,
        realtime=True,
    )
    ann = await event("ann", "Viewed")
    assert await members("shoppers") == {ann}
    # Nothing changed: the next batch reuses what the last one loaded and built.
    cached = await worker._store.definitions(ws)
    assert cached is not None and cached is await worker._store.definitions(ws)

    # Created between two events: the next event's profile is evaluated against it.
    await segmentation.create_audience(
        ws,
        key="buyers",
        name="",
        description="",
        definition=orjson.dumps(BOUGHT),
        account_level=False,
        skip_backfill=True,
        realtime=True,
    )
    await segmentation.create_computed_trait(
        ws,
        key="purchases",
        name="",
        definition=orjson.dumps({"type": "event_count", "event": "Bought"}),
        skip_backfill=True,
        realtime=True,
    )
    bob = await event("bob", "Bought")
    assert await members("buyers") == {bob}
    assert await computed("purchases") == {bob: 1}

    # Edited between two events (a new version, backfilled, then live): a view no
    # longer makes a shopper, a purchase does.
    await segmentation.update_audience(
        ws, key="shoppers", name="", description="", definition=orjson.dumps(BOUGHT)
    )
    await segmentation.idle()
    shoppers = await store.get_audience(ws, "shoppers")
    assert shoppers is not None and shoppers.state == LIVE and shoppers.live_version == 2
    assert await members("shoppers") == {bob}  # the backfill's answer: ann left
    cy = await event("cy", "Viewed")
    assert await members("shoppers") == {bob}  # the old definition would take cy in
    dee = await event("dee", "Bought")
    assert await members("shoppers") == {bob, dee}
    assert await computed("purchases") == {bob: 1, dee: 1}

    # A computed trait edited between two events counts by its new definition.
    await segmentation.update_computed_trait(
        ws,
        key="purchases",
        name="",
        definition=orjson.dumps({"type": "event_count", "event": "Viewed"}),
    )
    await segmentation.idle()
    assert await computed("purchases") == {ann: 1, cy: 1}  # its backfill's answer
    await event("dee", "Viewed")
    assert await computed("purchases") == {ann: 1, cy: 1, dee: 1}
    assert cy not in await members("buyers")

    # Deleted between two events: the next event writes nothing for it.
    buyers = await store.get_audience(ws, "buyers")
    assert buyers is not None
    await segmentation.delete_audience(ws, "buyers")
    before = await store.changes_after(ws, 0, None, 1000)
    await event("eve", "Bought")
    after = await store.changes_after(ws, 0, None, 1000)
    new = [(c.audience_id, c.kind) for c in after[len(before) :]]
    assert new == [(shoppers.audience_id, "entered")]  # eve, and nothing of buyers
