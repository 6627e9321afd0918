"""Realtime audiences through the real processes: events sent to ingest reach the
realtime worker over `stream:events`, and a realtime audience's members, its computed
trait and the profile's hot state change with no Recompute; the change lands on
`stream:changes` with the event's trace context; time passing (one controllable clock
in Redis shared by every process: CLOCK_REDIS_KEY) takes a member out with no event;
a redelivered stream changes nothing; and a worker killed with entries pending is
taken over by another with the same final state as an uninterrupted run."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.shared.clock import US_PER_DAY
from services.shared.streams import CHANGES_STREAM, EVENTS_STREAM
from services.shared.timestamps import timestamp_from_us
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.realtime import realtime_worker
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

CLOCK_KEY = "test:clock"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
GROUP = "segmentation-realtime"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_ids = itertools.count()


@dataclass
class Run:
    ingest: ingest_pb2_grpc.IngestServiceStub
    seg: segmentation_pb2_grpc.SegmentationServiceStub
    profile: profile_pb2_grpc.ProfileServiceStub
    redis: redis_asyncio.Redis
    admin: tuple[tuple[str, str], ...]
    write: tuple[tuple[str, str], ...]
    read: tuple[tuple[str, str], ...]
    env: dict[str, str]

    async def set_now(self, now_us: int) -> None:
        """Move every process's clock to `now_us`."""
        await self.redis.set(CLOCK_KEY, now_us)

    async def track(self, user: str, name: str, at_us: int, traceparent: str | None = None) -> None:
        """One track event of a user through ingest's Batch (accepted)."""
        await self.send(
            ingest_pb2.Event(type=ingest_pb2.EVENT_TYPE_TRACK, user_id=user, event=name),
            at_us,
            traceparent,
        )

    async def send(
        self, event: ingest_pb2.Event, at_us: int, traceparent: str | None = None
    ) -> None:
        """One event through ingest's Batch (accepted)."""
        event.message_id = f"rt-{next(_ids)}"
        event.timestamp.CopyFrom(timestamp_from_us(at_us))
        metadata = self.write + ((("traceparent", traceparent),) if traceparent else ())
        reply = await self.ingest.Batch(ingest_pb2.BatchRequest(events=[event]), metadata=metadata)
        assert reply.accepted == 1, reply

    async def create(self, key: str, definition: dict[str, Any]) -> None:
        """A realtime audience, backfilled (from whatever history exists) and LIVE."""
        await self.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key=key, definition=orjson.dumps(definition), realtime=True
                )
            ),
            metadata=self.admin,
        )
        await wait_live(self.seg, key, self.admin)

    async def members(self, key: str) -> set[str]:
        """The user ids of the audience's members (ListMembers)."""
        reply = await self.seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key=key, page_size=1000),
            metadata=self.admin,
        )
        return {
            i.value for m in reply.members for i in m.profile.identifiers if i.type == "user_id"
        }

    async def batch_members(self, definition: dict[str, Any]) -> set[str]:
        """The members batch evaluation (Preview) computes now."""
        reply = await self.seg.Preview(
            segmentation_pb2.PreviewRequest(definition=orjson.dumps(definition), sample_limit=-1),
            metadata=self.admin,
        )
        return {i.value for r in reply.sample for i in r.identifiers if i.type == "user_id"}

    async def history(self, key: str, user: str) -> list[int]:
        """The kinds of the user's change records in the audience, in seq order."""
        reply = await self.seg.GetMembershipHistory(
            segmentation_pb2.GetMembershipHistoryRequest(
                audience_key=key, identifier=common_pb2.Identifier(type="user_id", value=user)
            ),
            metadata=self.admin,
        )
        return [c.kind for c in reply.changes]

    async def changes(self) -> list[dict[str, str]]:
        """Every entry of the changes stream, as text fields."""
        return [
            {k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in await self.redis.xrange(CHANGES_STREAM)
        ]

    async def settled(self) -> bool:
        """Whether the worker group has read and acknowledged every event entry."""
        groups = await self.redis.xinfo_groups(EVENTS_STREAM)
        found = [g for g in groups if g["name"].decode() == GROUP]
        return bool(found) and found[0]["pending"] == 0 and found[0]["lag"] == 0


@pytest.fixture
async def run(database_url: str, redis_url: str, workspace: Any) -> AsyncIterator[Run]:
    """Ingest, segmentation and profile as processes on one controllable clock at T0."""
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.set(CLOCK_KEY, T0)
    env = {"CLOCK_REDIS_KEY": CLOCK_KEY, "SEGMENTATION_RECONCILE_SECONDS": "0"}
    names = ["ingest", "segmentation", "profile"]
    async with as_processes(database_url, redis_url, names, env) as addresses:
        channels = {n: grpc.aio.insecure_channel(a) for n, a in addresses.items()}
        try:
            yield Run(
                ingest_pb2_grpc.IngestServiceStub(channels["ingest"]),
                segmentation_pb2_grpc.SegmentationServiceStub(channels["segmentation"]),
                profile_pb2_grpc.ProfileServiceStub(channels["profile"]),
                client,
                bearer(workspace.admin),
                bearer(workspace.ingest),
                bearer(workspace.profile),
                env,
            )
        finally:
            for channel in channels.values():
                await channel.close()
            await client.aclose()


VIEWED_THIS_WEEK = {"event": {"name": "Viewed", "window": {"within_days": 7}}}


async def test_an_event_enters_and_time_passing_exits(
    run: Run, database_url: str, redis_url: str
) -> None:
    await run.create("viewers", VIEWED_THIS_WEEK)
    await run.seg.CreateComputedTrait(
        segmentation_pb2.CreateComputedTraitRequest(
            computed_trait=segmentation_pb2.ComputedTrait(
                key="views_7d",
                definition=orjson.dumps(
                    {"type": "event_count", "event": "Viewed", "window": {"within_days": 7}}
                ),
                realtime=True,
            )
        ),
        metadata=run.admin,
    )
    async with realtime_worker(database_url, redis_url, "w1", run.env):
        await run.track("ann", "Viewed", T0 - US_PER_DAY, TRACEPARENT)
        await run.track("bo", "Viewed", T0 - 2 * US_PER_DAY)

        async def both_in() -> bool:
            return await run.members("viewers") == {"ann", "bo"}

        await eventually(both_in, 20, "ann and bo enter viewers with no Recompute")
        profile = await run.profile.GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=common_pb2.Identifier(type="user_id", value="ann")
            ),
            metadata=run.read,
        )
        assert [a.key for a in profile.audiences] == ["viewers"]
        assert orjson.loads(profile.computed_traits) == {"views_7d": 1}

        async def both_published() -> list[dict[str, str]] | None:
            # Appended to the stream right after the commit ListMembers already sees.
            found = await run.changes()
            return found if len(found) >= 2 else None

        changes = await eventually(both_published, 20, "both changes on the changes stream")
        assert sorted(c["kind"] for c in changes) == ["entered", "entered"]
        event_entries = await run.redis.xrange(EVENTS_STREAM)
        ann_event = next(f for _, f in event_entries if b'"ann"' in f.get(b"event", b""))
        ann_pid = ann_event[b"profile_id"].decode()
        ann_change = next(c for c in changes if c["profile_id"] == ann_pid)
        # The change continues the trace of the event that caused it.
        assert ann_change["traceparent"] == ann_event[b"traceparent"].decode()
        assert ann_change["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
        assert ann_change["audience_key"] == "viewers"

        # Time passes with no event: bo's view (2 days ago) leaves the 7-day window at
        # T0 + 5 days, ann's at T0 + 6 days.
        await run.set_now(T0 + 5 * US_PER_DAY)

        async def bo_left() -> bool:
            return await run.members("viewers") == {"ann"}

        await eventually(bo_left, 20, "bo exits when his view is 7 days old")
        assert await run.history("viewers", "bo") == [
            segmentation_pb2.CHANGE_KIND_ENTERED,
            segmentation_pb2.CHANGE_KIND_EXITED,
        ]
        await run.set_now(T0 + 6 * US_PER_DAY)

        async def ann_left() -> bool:
            return await run.members("viewers") == set()

        await eventually(ann_left, 20, "ann exits when her view is 7 days old")
        profile = await run.profile.GetProfile(
            profile_pb2.GetProfileRequest(
                identifier=common_pb2.Identifier(type="user_id", value="ann")
            ),
            metadata=run.read,
        )
        assert list(profile.audiences) == []
        assert orjson.loads(profile.computed_traits) == {"views_7d": 0}

        async def all_published() -> list[dict[str, str]] | None:
            found = await run.changes()
            return found if len(found) >= 4 else None

        published = await eventually(all_published, 20, "the exits on the changes stream")
        assert sorted(c["kind"] for c in published) == ["entered", "entered", "exited", "exited"]
        # The exits agree with batch evaluation at the same instant.
        assert await run.batch_members(VIEWED_THIS_WEEK) == set()


async def test_redelivery_changes_nothing(run: Run, database_url: str, redis_url: str) -> None:
    await run.create("viewers", VIEWED_THIS_WEEK)
    async with realtime_worker(database_url, redis_url, "w1", run.env):
        for user in ("ann", "bo", "cy"):
            await run.track(user, "Viewed", T0 - US_PER_DAY)

        async def all_in() -> bool:
            return await run.members("viewers") == {"ann", "bo", "cy"} and await run.settled()

        await eventually(all_in, 20, "three viewers in and every entry acknowledged")
        before = await run.changes()
        # Deliver the whole stream again, as after a crash before the acks.
        await run.redis.xgroup_setid(EVENTS_STREAM, GROUP, "0")
        await eventually(run.settled, 20, "the redelivered entries acknowledged")
    assert await run.changes() == before
    for user in ("ann", "bo", "cy"):
        assert await run.history("viewers", user) == [segmentation_pb2.CHANGE_KIND_ENTERED]


REPEAT_BUYERS = {"event": {"name": "Ordered", "count": {"op": "gte", "value": 2}}}


async def test_a_killed_workers_entries_are_taken_over(
    run: Run, database_url: str, redis_url: str
) -> None:
    await run.create("repeat_buyers", REPEAT_BUYERS)
    users = [f"u{i}" for i in range(12)]
    async with realtime_worker(database_url, redis_url, "w1", run.env) as first:
        for user in users[:6]:
            for day in (3, 2):
                await run.track(user, "Ordered", T0 - day * US_PER_DAY)

        async def some_in() -> bool:
            return bool(await run.members("repeat_buyers"))

        await eventually(some_in, 20, "the first worker has written members")
        first.kill()  # SIGKILL: whatever it had read and not acknowledged stays pending
        first.wait(timeout=10)
    # Entries read by a consumer that then died, deterministically: pending, never acked.
    await run.redis.xgroup_createconsumer(EVENTS_STREAM, GROUP, "dead")
    for user in users[6:]:
        for day in (3, 2):
            await run.track(user, "Ordered", T0 - day * US_PER_DAY)
    read = await run.redis.xreadgroup(GROUP, "dead", {EVENTS_STREAM: ">"}, count=1000)
    # The 12 new events, and any the first worker had not read before it died.
    assert len(read[0][1]) >= 12
    async with realtime_worker(database_url, redis_url, "w2", run.env):
        await eventually(run.settled, 30, "the second worker took over every pending entry")
    expected = set(users)
    assert await run.members("repeat_buyers") == expected
    assert await run.batch_members(REPEAT_BUYERS) == expected
    # Nothing applied twice: one entered record per member, as an uninterrupted run.
    for user in users:
        assert await run.history("repeat_buyers", user) == [segmentation_pb2.CHANGE_KIND_ENTERED]
    # The changes stream is complete: the second worker's catch-up appended what the
    # first committed but had not appended when it was killed; nothing twice.

    async def stream_complete() -> bool:
        return len(await run.changes()) >= len(users)

    await eventually(stream_complete, 30, "every change record on the changes stream")
    entered = [c for c in await run.changes() if c["kind"] == "entered"]
    assert len(entered) == len(await run.changes())
    assert sorted(int(c["seq"]) for c in entered) == list(range(1, len(users) + 1))
    assert len({c["profile_id"] for c in entered}) == len(users)


LAPSED = {
    "all": [
        {"event": {"name": "Ordered"}},
        {"not": {"event": {"name": "Ordered", "window": {"within_days": 30}}}},
    ]
}


async def test_time_passing_admits_a_lapsed_customer(
    run: Run, database_url: str, redis_url: str
) -> None:
    await run.create("lapsed", LAPSED)
    async with realtime_worker(database_url, redis_url, "w1", run.env):
        await run.track("ann", "Ordered", T0 - 10 * US_PER_DAY)
        await run.track("bo", "Ordered", T0 - 40 * US_PER_DAY)

        async def bo_in() -> bool:
            return await run.members("lapsed") == {"bo"}

        await eventually(bo_in, 20, "bo, whose order is 40 days old, enters")
        # Ann's order turns 30 days old at T0 + 20 days, not a microsecond earlier: an
        # unrelated event of hers evaluated just before that leaves her out.
        await run.set_now(T0 + 20 * US_PER_DAY - 1)
        await run.track("ann", "Viewed", T0 + 20 * US_PER_DAY - 1)
        await eventually(run.settled, 20, "ann's view evaluated")
        assert await run.members("lapsed") == {"bo"}
        # Then time alone admits her.
        await run.set_now(T0 + 20 * US_PER_DAY)

        async def ann_in() -> bool:
            return await run.members("lapsed") == {"ann", "bo"}

        await eventually(ann_in, 20, "ann enters when 30 days pass without an order")
    assert await run.batch_members(LAPSED) == {"ann", "bo"}


TWO_VIEWS = {"event": {"name": "Viewed", "count": {"op": "gte", "value": 2}}}


async def test_a_merge_re_evaluates_the_person(run: Run, database_url: str, redis_url: str) -> None:
    await run.create("two_views", TWO_VIEWS)
    track = ingest_pb2.EVENT_TYPE_TRACK
    async with realtime_worker(database_url, redis_url, "w1", run.env):
        await run.send(
            ingest_pb2.Event(type=track, anonymous_id="v1", event="Viewed"), T0 - US_PER_DAY
        )
        await run.track("ann", "Viewed", T0 - US_PER_DAY)
        await eventually(run.settled, 20, "the two views evaluated")
        assert await run.members("two_views") == set()
        # The visitor turns out to be ann: one person with two views.
        await run.send(
            ingest_pb2.Event(type=ingest_pb2.EVENT_TYPE_IDENTIFY, user_id="ann", anonymous_id="v1"),
            T0 - 1,
        )

        async def ann_in() -> bool:
            return await run.members("two_views") == {"ann"}

        await eventually(ann_in, 20, "the merged person enters")
    assert await run.batch_members(TWO_VIEWS) == {"ann"}
    assert await run.history("two_views", "ann") == [segmentation_pb2.CHANGE_KIND_ENTERED]
