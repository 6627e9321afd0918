"""Every acknowledged event reaches the stream exactly once even when the process
loses Redis (or dies) between the Postgres commit and the publish."""

import asyncio

import pytest

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import STREAM_KEY, RedisPublisher, StreamCatchUp
from services.ingest.store import SqlEventStore
from services.shared.redis import create_redis
from tests.helpers.backends import free_port
from tests.integration.ingest.support import NOW_US, hot_traits, stored_events, stream_entries

pytestmark = pytest.mark.integration


def raw(i: int, user: str) -> RawEvent:
    return RawEvent(
        type="identify",
        message_id=f"m{i}",
        user_id=user,
        timestamp_us=NOW_US - 1000 + i,
        traits=b'{"n": %d}' % i,
    )


async def test_events_committed_while_redis_is_unreachable_are_published_once(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    ws = workspace.workspace_id
    store = SqlEventStore(resources.engine)
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        # Commit succeeds, the publish fails: the process "dies" between the two steps.
        broken = Ingestor(store, RedisPublisher(dead), resources.clock)
        first = await broken.ingest(ws, [raw(i, f"u{i % 3}") for i in range(5)])
    finally:
        await dead.aclose()
    assert all(o.seq for o in first.outcomes)
    assert await stream_entries(resources.redis) == []

    publisher = RedisPublisher(resources.redis)
    healthy = Ingestor(store, publisher, resources.clock)
    # A later batch must not overtake the unpublished one: it waits for catch-up.
    second = await healthy.ingest(ws, [raw(i, f"u{i % 3}") for i in range(5, 8)])
    assert await stream_entries(resources.redis) == []
    assert publisher.behind.is_set()

    # A retry of the first batch is a duplicate: acknowledged, not published again.
    retry = await healthy.ingest(ws, [raw(i, f"u{i % 3}") for i in range(5)])
    assert {o.status.value for o in retry.outcomes} == {"duplicate"}

    catch_up = StreamCatchUp(store, resources.redis, publisher)
    assert await catch_up.run_once() == 8
    assert await catch_up.run_once() == 0
    acked = [o.seq for o in first.outcomes + second.outcomes]
    entries = await stream_entries(resources.redis)
    assert [entry_id for entry_id, _ in entries] == [f"{seq}-0" for seq in sorted(acked)]
    assert [fields["seq"] for _, fields in entries] == [str(s) for s in sorted(acked)]
    # The catch-up also restored the hot state the lost publish never wrote.
    rows = {r["user_id"]: r["profile_id"] for r in await stored_events(resources.engine)}
    assert await hot_traits(resources.redis, ws, rows["u0"]) == {"n": 6}

    # Back in sync: the next batch is published by the request path directly.
    third = await healthy.ingest(ws, [raw(9, "u9")])
    assert (await stream_entries(resources.redis))[-1][0] == f"{third.outcomes[0].seq}-0"


async def test_a_partly_published_gap_is_completed_without_duplicates(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    store = SqlEventStore(resources.engine)
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        outcome = await Ingestor(store, RedisPublisher(dead), resources.clock).ingest(
            workspace.workspace_id, [raw(i, "u") for i in range(4)]
        )
    finally:
        await dead.aclose()
    seqs = [o.seq for o in outcome.outcomes]
    # The process died mid-publish: the first two entries made it, the cursor did not.
    await resources.redis.xadd(STREAM_KEY, {"seq": str(seqs[0])}, id=f"{seqs[0]}-0")
    await resources.redis.xadd(STREAM_KEY, {"seq": str(seqs[1])}, id=f"{seqs[1]}-0")
    publisher = RedisPublisher(resources.redis)
    assert await StreamCatchUp(store, resources.redis, publisher).run_once() == 2
    ids = [entry_id for entry_id, _ in await stream_entries(resources.redis)]
    assert ids == [f"{s}-0" for s in seqs]


async def test_the_catch_up_loop_stops_when_cancelled_as_it_is_woken(resources) -> None:  # type: ignore[no-untyped-def]
    """Shutdown cancels the loop and waits for it; a wake in the same loop pass must
    not swallow the cancellation (the process would never finish its drain)."""
    publisher = RedisPublisher(resources.redis)
    catch_up = StreamCatchUp(
        SqlEventStore(resources.engine), resources.redis, publisher, interval_seconds=60
    )
    loop_task = asyncio.get_running_loop().create_task(catch_up.run())
    await asyncio.sleep(0)  # the loop now waits to be woken
    publisher.wake()
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop_task, 5)
