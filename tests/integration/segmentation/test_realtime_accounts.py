"""Account-level realtime audiences: a user's event, a group call linking a user or
setting an account trait, and time passing each re-evaluate the accounts concerned,
and the worker's members equal batch evaluation at every step. Real Postgres and Redis;
ingest's own ingestor feeds the stream, the worker's own steps consume it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared import streams
from services.shared.server import Resources

pytestmark = pytest.mark.integration

PRO_WITH_NEW_SEATS = {
    "all": [
        {"trait": {"name": "plan", "op": "eq", "value": "pro"}},
        {
            "account": {
                "match": "any",
                "condition": {"event": {"name": "Seat Added", "window": {"within_days": 7}}},
            }
        },
    ]
}


async def test_accounts_follow_user_events_group_calls_and_time(resources: Resources) -> None:
    clock = resources.clock
    store = SegmentationStore(resources.engine)
    segmentation = Segmentation(store, HotState(resources.redis), clock)
    ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
    settings = RealtimeSettings(consumer="c", block_ms=None)
    worker = make_worker(resources, settings)
    await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, settings.group)
    ws, _, _ = await resources.keys.create_workspace("accounts")
    audience = await segmentation.create_audience(
        ws,
        key="expanding",
        name="",
        description="",
        definition=orjson.dumps(PRO_WITH_NEW_SEATS),
        account_level=True,
        skip_backfill=True,
        realtime=True,
    )
    sent = 0

    async def send(kind: str, user: str, **fields: Any) -> None:
        nonlocal sent
        sent += 1
        raw = RawEvent(type=kind, message_id=f"m{sent}", user_id=user, **fields)
        await ingestor.ingest(ws, [raw])
        while True:
            read = await streams.read_groups(
                resources.redis, settings.streams, settings.group, "c", 100, None
            )
            if not read:
                break
            await worker.process(read)
        await worker.run_due()

    async def members() -> set[int]:
        held = set(await store.members(audience.audience_id))
        batch = await store.evaluate_audience(
            ws, PRO_WITH_NEW_SEATS, clock.now_us(), account_level=True
        )
        assert held == batch, clock.now_us()
        stored = await store.get_audience(ws, "expanding")
        assert stored is not None and stored.size == len(held)
        return held

    await send("group", "ann", group_id="acme", traits={"plan": "pro"})
    assert await members() == set()
    await send("track", "ann", event="Seat Added")  # a user's event
    (acme,) = await members()
    await send("group", "bo", group_id="acme", traits={"plan": "free"})  # an account trait
    assert await members() == set()
    await send("group", "bo", group_id="acme", traits={"plan": "pro"})
    assert await members() == {acme}
    clock.advance(7 * 86_400)  # ann's seat leaves the window: time alone
    assert await worker.run_due() == 1
    assert await members() == set()
    await send("track", "bo", event="Seat Added")  # another user of the account
    assert await members() == {acme}
    kinds = [c.kind for c in await store.changes_after(ws, 0, None, 100)]
    assert kinds == ["entered", "exited", "entered", "exited", "entered"]
