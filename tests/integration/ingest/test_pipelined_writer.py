"""The pipelined writer: group N's Redis update runs while group N+1 is written to
Postgres, yet the hot state and the stream end exactly as if the groups had been
written one after another, and a Redis failure in the overlapped step loses no
acknowledged event."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest

from services.ingest.ingestor import HotUpdate, Ingestor, StreamRecord
from services.ingest.model import RawEvent, Status
from services.ingest.publisher import RedisPublisher, StreamCatchUp
from services.ingest.store import SqlEventStore
from tests.integration.ingest.support import NOW_US, hot_view, stream_entries

pytestmark = pytest.mark.integration


def identify(message_id: str, user: str, at: int, anon: str = "", **traits: object) -> RawEvent:
    return RawEvent(
        type="identify",
        message_id=message_id,
        user_id=user,
        anonymous_id=anon,
        timestamp_us=NOW_US - 10_000 + at,
        traits=orjson.dumps(traits),
    )


def track(message_id: str, anon: str, at: int) -> RawEvent:
    return RawEvent(
        type="track",
        message_id=message_id,
        anonymous_id=anon,
        event="Viewed",
        timestamp_us=NOW_US - 10_000 + at,
    )


# Three requests that touch the same profiles, so the order of their hot-state updates
# matters: the later plan must win, and the anonymous history merges into u1.
WAVES = [
    [identify("w1", "u1", 1, plan="free", seats=1), track("w2", "a1", 2)],
    [identify("w3", "u1", 3, anon="a1", plan="pro"), identify("w4", "u2", 4, plan="team")],
    [identify("w5", "u2", 5, plan="free"), track("w6", "a1", 6)],
]


class CommitSignals(SqlEventStore):
    """The real store; sets an event after each write session ends (its commit)."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        super().__init__(engine)
        self.committed: list[asyncio.Event] = [asyncio.Event() for _ in WAVES]
        self.sessions = 0
        self.holds = 0

    @asynccontextmanager
    async def locked(self, shards=(0,), connection=None) -> AsyncIterator:  # type: ignore[no-untyped-def,type-arg]
        self.holds += 1
        async with super().locked(shards, connection) as held:
            yield held

    @asynccontextmanager
    async def write_session(self, workspace_id: str, held=None, shards=(0,)) -> AsyncIterator:  # type: ignore[no-untyped-def,type-arg]
        async with super().write_session(workspace_id, held, shards) as session:
            yield session
        self.committed[self.sessions].set()
        self.sessions += 1


class GatedPublisher(RedisPublisher):
    """The real publisher, whose update of group N waits until group N+1 has been
    committed (so the two steps overlap for certain), and optionally fails once."""

    def __init__(self, redis, store: CommitSignals, fail_group: int | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(redis)
        self.store = store
        self.fail_group = fail_group
        self.applied = 0
        self.entered: list[asyncio.Event] = [asyncio.Event() for _ in WAVES]

    async def apply(
        self,
        prev_seq: int,
        last_seq: int,
        published_seq: int,
        hot: HotUpdate,
        records: list[StreamRecord],
    ) -> bool:
        group = self.applied
        self.applied += 1
        self.entered[group].set()
        if group + 1 < len(WAVES):
            await self.store.committed[group + 1].wait()
        if group == self.fail_group:
            raise ConnectionError("injected: Redis went away after the commit")
        return await super().apply(prev_seq, last_seq, published_seq, hot, records)


async def pipelined(ingestor: Ingestor, publisher: GatedPublisher, ws: str):  # type: ignore[no-untyped-def]
    """Each wave as its own group, sent while the previous group's update is pending."""
    tasks = []
    for number, wave in enumerate(WAVES):
        tasks.append(asyncio.create_task(ingestor.ingest(ws, wave)))
        if number + 1 < len(WAVES):
            await publisher.entered[number].wait()
    return await asyncio.gather(*tasks)


async def sequential_reference(resources) -> tuple[str, list]:  # type: ignore[no-untyped-def]
    reference, _, _ = await resources.keys.create_workspace("reference")
    ingestor = Ingestor(
        SqlEventStore(resources.engine), RedisPublisher(resources.redis), resources.clock
    )
    return reference, [await ingestor.ingest(reference, wave) for wave in WAVES]


def accepted_seqs(results, ws_rows=None) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted(o.seq for r in results for o in r.outcomes if o.status is Status.ACCEPTED)


async def published_seqs(redis, ws: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [
        int(fields["seq"])
        for _, fields in await stream_entries(redis)
        if fields["kind"] == "event" and fields["workspace_id"] == ws
    ]


async def test_overlapped_groups_leave_the_hot_state_of_a_sequential_replay(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    reference, expected = await sequential_reference(resources)
    ws = workspace.workspace_id
    store = CommitSignals(resources.engine)
    publisher = GatedPublisher(resources.redis, store)
    results = await pipelined(Ingestor(store, publisher, resources.clock), publisher, ws)

    # Every group was committed while the previous group's Redis update was pending,
    # all under one hold of the write lock.
    assert store.sessions == len(WAVES) and store.holds == 1
    assert [[o.status for o in r.outcomes] for r in results] == [
        [o.status for o in r.outcomes] for r in expected
    ]
    assert await hot_view(resources.redis, ws) == await hot_view(resources.redis, reference)
    view = await hot_view(resources.redis, ws)
    u1 = next(v for ids, v in view.items() if "user_id:u1" in ids)
    assert u1["traits"] == {"plan": "pro", "seats": 1}
    # Published straight from the request path, once each, in seq order.
    assert await published_seqs(resources.redis, ws) == accepted_seqs(results)
    assert not publisher.behind.is_set()


async def test_a_redis_failure_in_the_overlapped_step_loses_no_acknowledged_event(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    reference, _ = await sequential_reference(resources)
    ws = workspace.workspace_id
    store = CommitSignals(resources.engine)
    # The first group's update fails after the second group committed on top of it.
    publisher = GatedPublisher(resources.redis, store, fail_group=0)
    results = await pipelined(Ingestor(store, publisher, resources.clock), publisher, ws)

    acked = accepted_seqs(results)
    assert len(acked) == sum(len(wave) for wave in WAVES)  # all acknowledged: committed
    # Later groups did not overtake the lost one on the stream.
    assert await published_seqs(resources.redis, ws) == []
    assert publisher.behind.is_set()

    catch_up = StreamCatchUp(store, resources.redis, publisher)
    assert await catch_up.run_once() > 0
    assert await published_seqs(resources.redis, ws) == acked
    assert await catch_up.run_once() == 0
    assert await hot_view(resources.redis, ws) == await hot_view(resources.redis, reference)
