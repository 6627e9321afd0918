"""The stream helpers behave the same on real Redis and on the embedded store:
idempotent publish with explicit ids, consumer groups, ack, claim of stale entries,
and the trace context carried in each entry."""

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.shared import streams
from services.shared.redis import EmbeddedRedis, create_redis
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(params=["real", "embedded"])
async def client(request, redis_url) -> AsyncIterator[redis_asyncio.Redis]:  # type: ignore[no-untyped-def]
    if request.param == "real":
        connection = create_redis(redis_url)
        yield connection
        await connection.aclose()
        return
    store = EmbeddedRedis("127.0.0.1:0").start()
    connection = create_redis(store.url)
    yield connection
    await connection.aclose()
    store.close()


async def test_publish_is_idempotent_for_explicit_ids(client) -> None:  # type: ignore[no-untyped-def]
    first = await streams.publish(client, "s", [("1-0", {"seq": "1"}), ("2-0", {"seq": "2"})])
    assert first == ["1-0", "2-0"]
    # A re-publish after a crash: the old ids are refused as duplicates, the new one added.
    again = await streams.publish(client, "s", [("2-0", {"seq": "2"}), ("3-0", {"seq": "3"})])
    assert again == [None, "3-0"]
    assert await client.xlen("s") == 3


async def test_consumer_group_read_ack_and_claim(client) -> None:  # type: ignore[no-untyped-def]
    await streams.ensure_group(client, "s", "seg")
    await streams.ensure_group(client, "s", "seg")  # idempotent
    await streams.publish(client, "s", [(f"{i}-0", {"seq": str(i)}) for i in range(1, 6)])

    batch = await streams.read_group(client, "s", "seg", "worker-a", count=3, block_ms=None)
    assert [e.id for e in batch] == ["1-0", "2-0", "3-0"]
    assert await streams.ack(client, "s", "seg", [batch[0].id]) == 1
    # worker-a dies holding 2-0 and 3-0; worker-b reads the rest and then claims them.
    rest = await streams.read_group(client, "s", "seg", "worker-b", count=10, block_ms=None)
    assert [e.id for e in rest] == ["4-0", "5-0"]
    claimed = await streams.claim_stale(client, "s", "seg", "worker-b", min_idle_ms=0)
    assert {e.id for e in claimed} >= {"2-0", "3-0"}
    assert all(e.fields[b"seq"] for e in claimed)
    await streams.ack(client, "s", "seg", [e.id for e in claimed + rest])
    pending = await client.xpending("s", "seg")
    assert pending["pending"] == 0
    assert await streams.read_group(client, "s", "seg", "worker-b", block_ms=None) == []


async def test_a_blocking_read_waits_for_the_next_entry(client) -> None:  # type: ignore[no-untyped-def]
    # The embedded store once answered a blocking read at once with nothing, and every
    # consumer of `make run` spun a core on empty reads.
    await streams.ensure_group(client, "s", "seg")

    async def read_reached_the_store() -> bool:
        # Redis lists the blocked client (flag b); the embedded store creates the
        # consumer as the read arrives.
        if any("b" in c.get("flags", "") for c in await client.client_list()):
            return True
        consumers = await client.xinfo_consumers("s", "seg")
        return any(c["name"] in ("reader", b"reader") for c in consumers)

    reading = asyncio.create_task(
        streams.read_group(client, "s", "seg", "reader", count=10, block_ms=30_000)
    )
    # The read has reached the store (its consumer exists) before anything is published.
    await eventually(read_reached_the_store, within=10, what="the read is waiting")
    await streams.publish(client, "s", [("1-0", {"seq": "1"})])
    assert [entry.id for entry in await reading] == ["1-0"]


async def test_entries_carry_the_publishers_trace(client) -> None:  # type: ignore[no-untyped-def]
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("publish") as span:
        await streams.publish(client, "t", [(None, {"k": "v"})])
        trace_id = span.get_span_context().trace_id
    await streams.ensure_group(client, "t", "g")
    (entry,) = await streams.read_group(client, "t", "g", "c", block_ms=None)
    context = entry.trace_context()
    parent = trace.get_current_span(context).get_span_context()
    assert parent.trace_id == trace_id
    assert entry.fields[b"k"] == b"v"


async def test_several_shards_in_one_read_and_claims_by_page(client) -> None:  # type: ignore[no-untyped-def]
    for shard in ("a", "b"):
        await streams.ensure_group(client, shard, "seg")
        await streams.publish(client, shard, [(f"{i}-0", {"seq": str(i)}) for i in range(1, 4)])
    read = await streams.read_groups(client, ["a", "b"], "seg", "dead", count=10, block_ms=None)
    assert sorted((s, e.id) for s, e in read) == [(s, f"{i}-0") for s in "ab" for i in (1, 2, 3)]
    # Paging through what "dead" left pending, two at a time, until the cursor ends.
    cursor, taken = "0-0", []
    while True:
        cursor, page = await streams.claim_stale_page(client, "a", "seg", "b", 0, cursor, count=2)
        assert len(page) <= 2
        taken += [e.id for e in page]
        if cursor == "0-0":
            break
    assert taken == ["1-0", "2-0", "3-0"]
