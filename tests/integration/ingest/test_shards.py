"""Property: the same histories written through one shard by one writer, and through
four shards by two ingest fronts at once (each with its own lanes and connections, as
two processes), give the same profiles, traits, merges, hot state, outcomes and
per-profile stream order (docs/ingest.md, "Shards").

Each person browses on two anonymous ids, is tracked by user id, identifies either
anonymous id with the user (a merge when both sides already have profiles, across
shards whenever their identifiers hash to different shards), with timestamps in any
order, and resends earlier messages (duplicates). A person's batches are sent one
after another (each waits for its acknowledgement, as one client does); different
people's batches interleave at random, on random fronts.
"""

import asyncio
import random
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.ingestor import Ingestor, key_shard
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher, StreamCatchUp
from services.ingest.store import SqlEventStore
from services.shared import hotstate, streams
from services.shared.db.tables import events, identities, merges, profiles
from services.shared.redis import create_redis
from tests.helpers.backends import free_port
from tests.integration.ingest.support import NOW_US, hot_view, profile_views

pytestmark = pytest.mark.integration

SHARDS = 4
STEPS = ["browse_a", "browse_b", "track_user", "identify_a", "identify_b", "resend"]


@st.composite
def people(draw):  # type: ignore[no-untyped-def]
    """Per person, a list of batches of events; plus the interleaving's random seed."""
    histories: list[list[list[RawEvent]]] = []
    for person in range(draw(st.integers(1, 3))):
        user, anon_a, anon_b = f"user{person}", f"anon{person}a", f"anon{person}b"
        sent: list[RawEvent] = []
        batches: list[list[RawEvent]] = []
        for step_no, step in enumerate(draw(st.lists(st.sampled_from(STEPS), max_size=7))):
            at = NOW_US - 20_000 + draw(st.integers(0, 10_000))  # any order of times
            message_id = f"p{person}-{step_no}"
            if step == "resend" and sent:
                raw = sent[draw(st.integers(0, len(sent) - 1))]
            elif step.startswith("identify"):
                traits = draw(
                    st.dictionaries(
                        st.sampled_from(["plan", "city"]),
                        st.one_of(st.none(), st.integers(0, 9)),
                        max_size=2,
                    )
                )
                raw = RawEvent(
                    type="identify",
                    message_id=message_id,
                    user_id=user,
                    anonymous_id=anon_a if step.endswith("a") else anon_b,
                    timestamp_us=at,
                    traits=orjson.dumps(traits),
                )
            else:
                anon = {"browse_a": anon_a, "browse_b": anon_b}.get(step, "")
                raw = RawEvent(
                    type="track",
                    message_id=message_id,
                    user_id=user if step == "track_user" else "",
                    anonymous_id=anon,
                    event="Viewed",
                    timestamp_us=at,
                )
            sent.append(raw)
            # A batch of one, or the event joins the person's previous batch.
            if batches and draw(st.booleans()):
                batches[-1].append(raw)
            else:
                batches.append([raw])
        histories.append(batches)
    return histories, draw(st.integers(0, 2**32))


async def _statuses(front: Ingestor, workspace_id: str, batch: list[RawEvent]) -> list[str]:
    outcome = await front.ingest(workspace_id, batch)
    return [o.status.value for o in outcome.outcomes]


async def _sequential(front: Ingestor, workspace_id: str, histories) -> list[list[str]]:  # type: ignore[no-untyped-def]
    found: list[list[str]] = []
    for batches in histories:
        statuses: list[str] = []
        for batch in batches:
            statuses += await _statuses(front, workspace_id, batch)
        found.append(statuses)
    return found


async def _interleaved(fronts: list[Ingestor], workspace_id: str, histories, seed: int):  # type: ignore[no-untyped-def]
    chance = random.Random(seed)

    async def person(batches: list[list[RawEvent]], plan: list[tuple[int, int]]) -> list[str]:
        statuses: list[str] = []
        for batch, (front, yields) in zip(batches, plan, strict=True):
            for _ in range(yields):
                await asyncio.sleep(0)  # lets other people's batches go first
            statuses += await _statuses(fronts[front], workspace_id, batch)
        return statuses

    plans = [[(chance.randrange(2), chance.randrange(4)) for _ in b] for b in histories]
    return list(
        await asyncio.gather(*(person(b, p) for b, p in zip(histories, plans, strict=True)))
    )


async def _ids_of(engine: AsyncEngine) -> dict[int, frozenset[str]]:
    """Every profile id (merged ones too) -> its live canonical profile's identifiers."""
    async with engine.connect() as connection:
        canonical = dict(
            (await connection.execute(select(profiles.c.profile_id, profiles.c.canonical_id))).all()
        )  # type: ignore[arg-type]
        held: dict[int, set[str]] = defaultdict(set)
        for row in await connection.execute(select(identities)):
            held[row.profile_id].add(f"{row.id_type}:{row.id_value}")
    return {pid: frozenset(held[root]) for pid, root in canonical.items()}


async def _merge_counts(engine: AsyncEngine, workspace_id: str) -> dict[frozenset[str], int]:
    ids = await _ids_of(engine)
    counts: dict[frozenset[str], int] = defaultdict(int)
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(merges.c.survivor_id).where(merges.c.workspace_id == workspace_id)
        )
        for (survivor,) in rows:
            counts[ids[survivor]] += 1
    return dict(counts)


async def _stream_order(
    redis: Redis, engine: AsyncEngine, workspace_id: str, shards: int, sent: dict[str, int]
) -> dict[frozenset[str], list[str]]:
    """Per final profile, the message ids of its event entries (sorted). Checks that
    each profile's entries are in the order its person sent them (stream order, which
    for one profile is seq order: one shard, commit order), every event is on its
    profile's shard once and every merge on its survivor's and merged profile's.

    Events a request carries for two different profiles (say a visitor's page view
    and a user's track, merged later in the request) may be committed in either order,
    as two concurrent requests may: they go to different shards."""
    ids = await _ids_of(engine)
    events: list[tuple[int, int, str]] = []
    merge_entries: list[tuple[int, int, int]] = []
    for shard, stream in enumerate(streams.event_streams(shards)):
        for _, fields in await redis.xrange(stream):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            if f["workspace_id"] != workspace_id:
                continue
            if f["kind"] == "event":
                pid = int(f["profile_id"])
                assert streams.shard_of_profile(pid, shards) == shard
                events.append((int(f["seq"]), pid, orjson.loads(f["event"])["message_id"]))
            else:
                pair = (int(f["survivor_id"]), int(f["merged_id"]))
                assert shard in {streams.shard_of_profile(p, shards) for p in pair}
                merge_entries.append((int(f["seq"]), *pair))
    assert len({message for _, _, message in events}) == len(events)  # each event once
    expected_merges = 0
    async with engine.connect() as connection:
        for survivor, merged in await connection.execute(
            select(merges.c.survivor_id, merges.c.merged_id).where(
                merges.c.workspace_id == workspace_id
            )
        ):
            sides = {streams.shard_of_profile(p, shards) for p in (survivor, merged)}
            expected_merges += len(sides)
    assert len(merge_entries) == expected_merges
    per_profile: dict[int, list[str]] = defaultdict(list)
    for _, pid, message in sorted(events):
        per_profile[pid].append(message)
    for messages in per_profile.values():
        assert messages == sorted(messages, key=sent.__getitem__)
    order: dict[frozenset[str], list[str]] = defaultdict(list)
    for pid, messages in per_profile.items():
        order[ids[pid]] += messages
    return {key: sorted(messages) for key, messages in order.items()}


async def _observed(
    redis: Redis, engine: AsyncEngine, workspace_id: str, shards: int, sent: dict[str, int]
) -> Any:
    return (
        await profile_views(engine, workspace_id),
        await hot_view(redis, workspace_id),
        await _merge_counts(engine, workspace_id),
        await _stream_order(redis, engine, workspace_id, shards, sent),
    )


async def test_four_shards_and_two_writers_match_one_shard(resources) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    single = Ingestor(
        SqlEventStore(resources.engine), RedisPublisher(resources.redis), resources.clock
    )
    fronts = [
        Ingestor(
            SqlEventStore(resources.engine, SHARDS),
            RedisPublisher(resources.redis, shards=SHARDS),
            resources.clock,
        )
        for _ in range(2)
    ]

    def run(coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(people())
    def check(drawn) -> None:  # type: ignore[no-untyped-def]
        histories, seed = drawn
        one, _, _ = run(resources.keys.create_workspace("one shard"))
        four, _, _ = run(resources.keys.create_workspace("four shards"))
        expected_statuses = run(_sequential(single, one, histories))
        assert run(_interleaved(fronts, four, histories, seed)) == expected_statuses
        sent: dict[str, int] = {}
        for batches in histories:
            for raw in (raw for batch in batches for raw in batch):
                sent.setdefault(raw.message_id, len(sent))
        expected = run(_observed(resources.redis, resources.engine, one, 1, sent))
        assert run(_observed(resources.redis, resources.engine, four, SHARDS, sent)) == expected

    await asyncio.to_thread(check)


def _apart(workspace_id: str) -> tuple[str, str]:
    """An anonymous id and a user id whose identifiers hash to different shards."""
    anon = "anon-x"
    shard = key_shard(workspace_id, ("anonymous_id", anon), SHARDS)
    user = next(
        f"user-{i}"
        for i in range(100)
        if key_shard(workspace_id, ("user_id", f"user-{i}"), SHARDS) != shard
    )
    return anon, user


class StaleHolders(SqlEventStore):
    """The real store whose lock-free holder look-up answers "nobody" while `stale`:
    as if a merge on another process moved the profiles after the router looked."""

    stale = 0
    calls = 0

    async def holders(self, workspace_id, keys):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.stale:
            self.stale -= 1
            return {}
        return await super().holders(workspace_id, keys)


async def test_a_merge_across_shards_is_on_both_streams_and_rerouted_when_stale(  # type: ignore[no-untyped-def]
    resources,
) -> None:
    store = StaleHolders(resources.engine, SHARDS)
    front = Ingestor(store, RedisPublisher(resources.redis, shards=SHARDS), resources.clock)
    ws, _, _ = await resources.keys.create_workspace("apart")
    anon, user = _apart(ws)

    def raw(message_id: str, kind: str = "track", **ids: str) -> RawEvent:
        name = "Viewed" if kind == "track" else ""
        return RawEvent(
            type=kind, message_id=message_id, event=name, timestamp_us=NOW_US - 1000, **ids
        )

    browsed = (await front.ingest(ws, [raw("m1", anonymous_id=anon)])).outcomes[0].profile_id
    known = (await front.ingest(ws, [raw("m2", user_id=user)])).outcomes[0].profile_id
    assert streams.shard_of_profile(browsed, SHARDS) != streams.shard_of_profile(known, SHARDS)
    # The identify links them under both profiles' shard locks.
    (linked,) = (
        await front.ingest(ws, [raw("m3", "identify", anonymous_id=anon, user_id=user)])
    ).outcomes
    survivor = linked.profile_id
    merged = known if survivor == browsed else browsed
    assert {survivor, merged} == {browsed, known}
    on_streams = {}
    for shard, stream in enumerate(streams.event_streams(SHARDS)):
        for entry_id, fields in await resources.redis.xrange(stream):
            if fields[b"workspace_id"].decode() == ws and fields[b"kind"] == b"merge":
                on_streams[shard] = (
                    entry_id.decode(),
                    int(fields[b"survivor_id"]),
                    int(fields[b"merged_id"]),
                )
    sides = {streams.shard_of_profile(p, SHARDS) for p in (survivor, merged)}
    assert set(on_streams) == sides
    assert set(on_streams.values()) == {(f"{linked.seq}-1", survivor, merged)}
    # The identifier the merged profile brought now belongs to the survivor, on
    # another shard. Told (stale) that nobody holds it, the router sends its track to
    # the identifier's own shard; the lane finds the holder under that lock, answers
    # Reroute, and the event is routed again, to the survivor's shard.
    moved = {"anonymous_id": anon} if merged == browsed else {"user_id": user}
    store.stale, store.calls = 1, 0
    (after,) = (await front.ingest(ws, [raw("m4", **moved)])).outcomes
    assert (after.status.value, after.profile_id, store.calls) == ("accepted", survivor, 2)
    assert (streams.shard_of_profile(survivor, SHARDS),) in front._lanes
    entries = await resources.redis.xrange(
        streams.event_stream(streams.shard_of_profile(survivor, SHARDS), SHARDS)
    )
    assert entries[-1][0].decode() == f"{after.seq}-0"


async def test_a_lost_publish_on_four_shards_is_caught_up_per_shard_once(  # type: ignore[no-untyped-def]
    resources,
) -> None:
    """test_crash_safety.py's lost publish, per shard: groups committed while Redis is
    unreachable (with merges across shards in them) reach each shard's stream once, in
    seq order, with each merge on both sides, through the catch-up."""
    ws, _, _ = await resources.keys.create_workspace("lost publish")
    store = SqlEventStore(resources.engine, SHARDS)

    def person(i: int, at: int) -> list[RawEvent]:
        stamp = NOW_US - 10_000 + at
        return [
            RawEvent(
                type="track",
                message_id=f"v{i}-{at}",
                anonymous_id=f"a{i}",
                event="Viewed",
                timestamp_us=stamp,
            ),
            RawEvent(
                type="track",
                message_id=f"t{i}-{at}",
                user_id=f"u{i}",
                event="Viewed",
                timestamp_us=stamp,
            ),
            RawEvent(
                type="identify",
                message_id=f"i{i}-{at}",
                anonymous_id=f"a{i}",
                user_id=f"u{i}",
                timestamp_us=stamp,
                traits=orjson.dumps({"at": at}),
            ),
        ]

    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        broken = Ingestor(store, RedisPublisher(dead, shards=SHARDS), resources.clock)
        first = await broken.ingest(ws, [e for i in range(6) for e in person(i, 1)])
    finally:
        await dead.aclose()
    assert all(o.seq for o in first.outcomes)
    publisher = RedisPublisher(resources.redis, shards=SHARDS)
    healthy = Ingestor(store, publisher, resources.clock)
    second = await healthy.ingest(ws, [e for i in range(4, 9) for e in person(i, 2)])
    assert all(o.status.value == "accepted" for o in second.outcomes)

    catch_up = StreamCatchUp(store, resources.redis, publisher)
    await catch_up.run_once()
    assert await catch_up.run_once() == 0
    async with resources.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(events.c.seq, events.c.profile_id).where(events.c.workspace_id == ws)
            )
        ).all()
        merge_rows = (
            await connection.execute(
                select(merges.c.event_seq, merges.c.survivor_id, merges.c.merged_id).where(
                    merges.c.workspace_id == ws
                )
            )
        ).all()
    assert len(rows) == len(first.outcomes) + len(second.outcomes)
    assert merge_rows
    for shard, stream in enumerate(streams.event_streams(SHARDS)):
        entries = [
            (entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
            for entry_id, fields in await resources.redis.xrange(stream)
        ]
        mine = [(i, f) for i, f in entries if f["workspace_id"] == ws]
        seqs = [int(f["seq"]) for _, f in mine if f["kind"] == "event"]
        expected = sorted(
            seq for seq, pid in rows if streams.shard_of_profile(pid, SHARDS) == shard
        )
        assert seqs == expected
        merged_here = sorted(
            (int(f["seq"]), int(f["survivor_id"]), int(f["merged_id"]))
            for _, f in mine
            if f["kind"] == "merge"
        )
        assert merged_here == sorted(
            tuple(row)
            for row in merge_rows
            if shard in {streams.shard_of_profile(p, SHARDS) for p in row[1:]}
        )
    # The hot state followed: each person's latest trait, on the survivor.
    for i in range(9):
        holder = await resources.redis.get(hotstate.identity_key(ws, "user_id", f"u{i}"))
        traits = await resources.redis.hgetall(hotstate.profile_key(ws, int(holder), "traits"))
        assert orjson.loads(traits[b"at"]) == (2 if i >= 4 else 1)
