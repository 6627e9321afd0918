"""Group commit: concurrent requests written as one transaction give every caller the
same outcomes, and the store the same profiles, as writing them one after another."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest

from services.ingest.ingestor import Ingestor, WritePlan, WriteResult
from services.ingest.model import RawEvent, Status
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from tests.integration.ingest.support import NOW_US, profile_views, stored_events, stream_entries

pytestmark = pytest.mark.integration


class CountingStore(SqlEventStore):
    """The real store, counting write transactions and optionally failing the write of
    any transaction that holds a given message id (an injected fault)."""

    def __init__(self, engine, poison: str | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(engine)
        self.sessions = 0
        self.poison = poison

    @asynccontextmanager
    async def write_session(self, workspace_id: str, held=None, shards=(0,)) -> AsyncIterator:  # type: ignore[no-untyped-def,type-arg]
        async with super().write_session(workspace_id, held, shards) as session:
            self.sessions += 1
            write = session.write

            async def faulty(plan: WritePlan) -> WriteResult:
                if any(s.event.message_id == self.poison for s in plan.events):
                    raise RuntimeError("injected write failure")
                return await write(plan)

            session.write = faulty  # type: ignore[method-assign]
            yield session


def ev(
    kind: str,
    message_id: str,
    user: str = "",
    anon: str = "",
    at: int = 0,
    traits: dict | None = None,  # type: ignore[type-arg]
    **extra: str,
) -> RawEvent:
    return RawEvent(
        type=kind,
        message_id=message_id,
        user_id=user,
        anonymous_id=anon,
        event="Viewed" if kind == "track" else "",
        timestamp_us=NOW_US - 10_000 + at,
        traits=None if traits is None else orjson.dumps(traits),
        **extra,
    )


# Requests that overlap: the same message ids within and across requests, anonymous
# histories that later requests identify (merges inside one group), alias, traits set
# by several requests, and events a request repeats from an earlier one.
REQUESTS = [
    [
        ev("track", "m1", anon="a1", at=1),
        ev("identify", "m2", user="u1", at=2, traits={"plan": "free", "seats": 1}),
        ev("track", "m3", anon="a2", at=3),
    ],
    [
        ev("track", "m3", anon="a2", at=3),  # duplicate of the previous request's m3
        ev("identify", "m4", user="u1", anon="a1", at=4, traits={"plan": "pro"}),
        ev("track", "m5", user="u2", at=5),
        ev("track", "m5", user="u2", at=5),  # duplicate within the request
    ],
    [
        ev("identify", "m6", user="u2", anon="a2", at=6, traits={"email": "X@Example.com"}),
        ev("alias", "m7", user="u3", at=7, previous_id="a9"),
        ev("track", "m8", anon="a9", at=8),
        ev("identify", "m2", user="u1", at=2, traits={"plan": "free", "seats": 1}),
    ],
    [
        ev("identify", "m9", user="u1", at=1, traits={"plan": "old", "city": "Oslo"}),
        ev("track", "m10", user="u3", anon="a3", at=9),
    ],
]


def statuses(outcomes) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(o.message_id, o.status.value) for o in outcomes]


async def test_concurrent_requests_store_what_sequential_requests_store(  # type: ignore[no-untyped-def]
    resources,
) -> None:
    store = CountingStore(resources.engine)
    ingestor = Ingestor(store, RedisPublisher(resources.redis), resources.clock)
    sequential, _, _ = await resources.keys.create_workspace("sequential")
    together, _, _ = await resources.keys.create_workspace("together")

    one_by_one = [await ingestor.ingest(sequential, request) for request in REQUESTS]
    assert store.sessions == len(REQUESTS)
    grouped = await asyncio.gather(*(ingestor.ingest(together, r) for r in REQUESTS))
    assert store.sessions == len(REQUESTS) + 1  # all four requests in one transaction

    assert [statuses(o.outcomes) for o in grouped] == [statuses(o.outcomes) for o in one_by_one]
    assert await profile_views(resources.engine, together) == await profile_views(
        resources.engine, sequential
    )
    # A duplicate answers with the first copy's seq and profile, across requests too.
    first_m3 = grouped[0].outcomes[2]
    again_m3 = grouped[1].outcomes[0]
    assert again_m3.status is Status.DUPLICATE
    assert (again_m3.seq, again_m3.profile_id) == (first_m3.seq, first_m3.profile_id)
    # Every accepted event is stored once and published once, in seq order.
    rows = [r for r in await stored_events(resources.engine) if r["workspace_id"] == together]
    accepted = sorted(
        o.seq for batch in grouped for o in batch.outcomes if o.status is Status.ACCEPTED
    )
    assert sorted(r["seq"] for r in rows) == accepted
    assert len({r["message_id"] for r in rows}) == len(rows) == 10
    published = [
        int(fields["seq"])
        for _, fields in await stream_entries(resources.redis)
        if fields["kind"] == "event" and fields["workspace_id"] == together
    ]
    assert published == accepted


async def test_a_bad_event_or_request_fails_only_itself_in_a_group(  # type: ignore[no-untyped-def]
    resources, workspace
) -> None:
    ws = workspace.workspace_id
    store = CountingStore(resources.engine, poison="poison")
    ingestor = Ingestor(store, RedisPublisher(resources.redis), resources.clock)
    good = [ev("track", "g1", user="u1"), ev("track", "g2", user="u2")]
    mixed = [
        ev("track", "b1", user="u1"),
        ev("track", "b2"),  # no identifier at all: invalid
        ev("track", "b3", user="null"),  # only a blocked value
    ]
    single = ev("track", "", anon="guest")  # one-event RPC, only a blocked value
    poisoned = [ev("track", "p1", user="u3"), ev("track", "poison", user="u3")]

    results = await asyncio.gather(
        ingestor.ingest(ws, good),
        ingestor.ingest(ws, mixed),
        ingestor.ingest(ws, [single], single=True),
        ingestor.ingest(ws, poisoned),
        return_exceptions=True,
    )

    assert statuses(results[0].outcomes) == [("g1", "accepted"), ("g2", "accepted")]
    assert [o.status for o in results[1].outcomes] == [
        Status.ACCEPTED,
        Status.REJECTED,
        Status.REJECTED,
    ]
    assert [v.field for v in results[1].outcomes[1].violations] == ["events[1].user_id"]
    assert [v.field for v in results[1].outcomes[2].violations] == ["events[2].user_id"]
    (alone,) = results[2].outcomes
    assert alone.status is Status.REJECTED
    assert [v.field for v in alone.violations] == ["event.user_id"]
    # The poisoned request failed on its own; the group was retried without it.
    assert isinstance(results[3], RuntimeError)
    stored = {r["message_id"] for r in await stored_events(resources.engine)}
    assert stored == {"g1", "g2", "b1"}
