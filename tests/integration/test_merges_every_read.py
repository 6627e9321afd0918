"""After a merge every read names the survivor, at every moment: right after the merge
(before any Recompute) and after the Recompute that settles it.

The reads are the segmentation API (ListMembers, ExplainMembership,
GetMembershipHistory), the profile API (GetProfile by either identifier) and the HTTP
view, over real Postgres and Redis, with the services started in this process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from audiences.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.profile import httpview
from services.profile.app import build
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.timestamps import timestamp_from_us, us_from_timestamp
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

pytestmark = pytest.mark.integration

VIEWED = "Viewed"


@dataclass(frozen=True)
class Seen:
    """What one read path says about the person in one audience."""

    profile_id: str
    member: bool
    entered_at_us: int | None


@dataclass
class Reads:
    ingest: ingest_pb2_grpc.IngestServiceStub
    seg: segmentation_pb2_grpc.SegmentationServiceStub
    profiles: profile_pb2_grpc.ProfileServiceStub
    http: aiohttp.ClientSession
    admin: Any
    write: Any
    read: Any
    read_key: str
    clock: FixedClock

    @property
    def now_us(self) -> int:
        return self.clock.now_us()

    async def send(self, events: Sequence[dict[str, Any]]) -> None:
        messages = []
        for i, e in enumerate(events):
            m = ingest_pb2.Event(
                type=ingest_pb2.EVENT_TYPE_TRACK
                if "event" in e
                else ingest_pb2.EVENT_TYPE_IDENTIFY,
                message_id=f"m{time.monotonic_ns()}-{i}",
                user_id=e.get("user_id", ""),
                anonymous_id=e.get("anonymous_id", ""),
                event=e.get("event", ""),
                traits=orjson.dumps(e["traits"]) if "traits" in e else b"",
            )
            m.timestamp.CopyFrom(timestamp_from_us(self.now_us - e.get("days_ago", 1) * US_PER_DAY))
            messages.append(m)
        reply = await self.ingest.Batch(
            ingest_pb2.BatchRequest(events=messages), metadata=self.write
        )
        assert reply.accepted == len(events), reply

    async def create(self, key: str, definition: Any) -> None:
        await self.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(key=key, definition=orjson.dumps(definition))
            ),
            metadata=self.admin,
        )
        await wait_live(self.seg, key, self.admin)

    async def recompute(self) -> segmentation_pb2.RecomputeResponse:
        return await self.seg.Recompute(segmentation_pb2.RecomputeRequest(), metadata=self.admin)

    async def members(self, key: str) -> tuple[list[tuple[str, set[tuple[str, str]], int]], int]:
        """(profile id, identifiers, entered_at_us) of every member, and `total`."""
        page = await self.seg.ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key=key), metadata=self.admin
        )
        return [
            (
                m.profile.profile_id,
                {(i.type, i.value) for i in m.profile.identifiers},
                us_from_timestamp(m.entered_at),
            )
            for m in page.members
        ], page.total

    async def every_read(self, key: str, id_type: str, id_value: str) -> list[tuple[str, Seen]]:
        """What each read path says about the person named by the identifier."""
        identifier = common_pb2.Identifier(type=id_type, value=id_value)
        seen: list[tuple[str, Seen]] = []

        listed, total = await self.members(key)
        assert total == len(listed)
        profile = await self.profiles.GetProfile(
            profile_pb2.GetProfileRequest(identifier=identifier), metadata=self.read
        )
        mine = [m for m in listed if m[0] == profile.profile_id]
        seen.append(
            (
                "ListMembers",
                Seen(profile.profile_id, bool(mine), mine[0][2] if mine else None),
            )
        )
        # A member of the list is always someone the profile API knows by that id.
        assert all(len(m[1]) > 0 for m in listed), listed

        held = {a.key: us_from_timestamp(a.entered_at) for a in profile.audiences}
        seen.append(("GetProfile", Seen(profile.profile_id, key in held, held.get(key))))

        async with self.http.get(
            f"/v1/profiles/{id_type}:{id_value}/audiences",
            headers={"Authorization": f"Bearer {self.read_key}"},
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        entry = body["audiences"].get(key)
        seen.append(
            (
                "HTTP view",
                Seen(
                    profile.profile_id,
                    entry is not None,
                    held.get(key) if entry is not None else None,
                ),
            )
        )

        explained = await self.seg.ExplainMembership(
            segmentation_pb2.ExplainMembershipRequest(audience_key=key, identifier=identifier),
            metadata=self.admin,
        )
        seen.append(
            (
                "ExplainMembership",
                Seen(
                    explained.profile.profile_id,
                    explained.member,
                    held.get(key) if explained.member else None,
                ),
            )
        )

        request = segmentation_pb2.GetMembershipHistoryRequest(
            audience_key=key, identifier=identifier
        )
        request.at.CopyFrom(timestamp_from_us(self.now_us))
        history = await self.seg.GetMembershipHistory(request, metadata=self.admin)
        named = {c.profile.profile_id for c in history.changes}
        assert named <= {profile.profile_id}, (named, profile.profile_id)
        seen.append(
            (
                "GetMembershipHistory",
                Seen(
                    profile.profile_id,
                    history.member_at,
                    held.get(key) if history.member_at else None,
                ),
            )
        )
        return seen


def _agree(seen: list[tuple[str, Seen]], survivor: str, member: bool) -> int | None:
    """Every read names `survivor` and says `member`, with one entered_at."""
    expected = {name: (survivor, member) for name, _ in seen}
    assert {name: (s.profile_id, s.member) for name, s in seen} == expected
    instants = {s.entered_at_us for _, s in seen}
    assert len(instants) == 1, seen
    return instants.pop()


@pytest.fixture
async def reads(resources, workspace, clock) -> AsyncIterator[Reads]:  # type: ignore[no-untyped-def]
    runner, port = await httpview.start(build(resources), resources.keys, "127.0.0.1", 0)
    async with (
        in_process(resources, ["ingest", "segmentation", "profile"]) as addresses,
        grpc.aio.insecure_channel(addresses["ingest"]) as ingest,
        grpc.aio.insecure_channel(addresses["segmentation"]) as seg,
        grpc.aio.insecure_channel(addresses["profile"]) as profiles,
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
    ):
        yield Reads(
            ingest_pb2_grpc.IngestServiceStub(ingest),
            segmentation_pb2_grpc.SegmentationServiceStub(seg),
            profile_pb2_grpc.ProfileServiceStub(profiles),
            http,
            bearer(workspace.admin),
            bearer(workspace.ingest),
            bearer(workspace.profile),
            workspace.profile,
            clock,
        )
    await runner.cleanup()


async def _profile_id(reads: Reads, id_type: str, id_value: str) -> str:
    found = await reads.profiles.GetProfile(
        profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type=id_type, value=id_value)
        ),
        metadata=reads.read,
    )
    return found.profile_id


async def test_anonymous_member_merging_into_an_older_user(reads: Reads) -> None:
    await reads.send([{"user_id": "ada", "traits": {"plan": "free"}, "days_ago": 5}])
    await reads.send([{"anonymous_id": "anon-1", "event": VIEWED, "days_ago": 2}])
    survivor = await _profile_id(reads, "user_id", "ada")
    absorbed = await _profile_id(reads, "anonymous_id", "anon-1")
    assert survivor != absorbed
    await reads.create("viewers", {"event": {"name": VIEWED}})
    before = _agree(await reads.every_read("viewers", "anonymous_id", "anon-1"), absorbed, True)

    # The anonymous visitor signs in: its profile merges into ada's older one.
    await reads.send([{"user_id": "ada", "anonymous_id": "anon-1", "traits": {}}])
    for id_type, id_value in (("user_id", "ada"), ("anonymous_id", "anon-1")):
        gap = _agree(await reads.every_read("viewers", id_type, id_value), survivor, True)
        assert gap == before  # the person entered when the visitor did
    listed, total = await reads.members("viewers")
    assert total == 1
    assert {("user_id", "ada"), ("anonymous_id", "anon-1")} <= listed[0][1]

    # The Recompute agrees: the person never left, so nothing is logged.
    result = await reads.recompute()
    assert (result.entered, result.exited) == (0, 0)
    for id_type, id_value in (("user_id", "ada"), ("anonymous_id", "anon-1")):
        settled = _agree(await reads.every_read("viewers", id_type, id_value), survivor, True)
        assert settled == before


async def test_both_members_merge_into_one_who_later_exits(reads: Reads) -> None:
    await reads.send([{"user_id": "bob", "traits": {"plan": "free"}, "days_ago": 5}])
    await reads.send([{"anonymous_id": "anon-2", "event": VIEWED, "days_ago": 2}])
    await reads.create("not_pro", {"not": {"trait": {"name": "plan", "op": "eq", "value": "pro"}}})
    survivor = await _profile_id(reads, "user_id", "bob")
    listed, total = await reads.members("not_pro")
    assert total == 2
    bob_entered = next(m[2] for m in listed if m[0] == survivor)

    await reads.send([{"user_id": "bob", "anonymous_id": "anon-2", "traits": {}}])
    listed, total = await reads.members("not_pro")
    assert [m[0] for m in listed] == [survivor] and total == 1
    gap = _agree(await reads.every_read("not_pro", "anonymous_id", "anon-2"), survivor, True)
    assert gap == bob_entered  # both entered in the same backfill

    assert (r := await reads.recompute()).entered == 0 and r.exited == 0
    _agree(await reads.every_read("not_pro", "user_id", "bob"), survivor, True)

    # Now the person becomes pro: one exit, under the survivor, seen by every read.
    await reads.send([{"user_id": "bob", "traits": {"plan": "pro"}, "days_ago": 0}])
    result = await reads.recompute()
    assert (result.entered, result.exited) == (0, 1)
    for id_type, id_value in (("user_id", "bob"), ("anonymous_id", "anon-2")):
        _agree(await reads.every_read("not_pro", id_type, id_value), survivor, False)
    assert await reads.members("not_pro") == ([], 0)


async def test_the_person_entered_when_the_first_of_their_profiles_did(reads: Reads) -> None:
    await reads.send([{"user_id": "cy", "traits": {"plan": "free"}, "days_ago": 5}])
    await reads.send([{"anonymous_id": "anon-3", "event": VIEWED, "days_ago": 2}])
    await reads.create("viewers", {"event": {"name": VIEWED}})
    first = reads.now_us
    # An hour later the user views too and enters on their own.
    reads.clock.advance(3600)
    await reads.send([{"user_id": "cy", "event": VIEWED, "days_ago": 0}])
    assert (await reads.recompute()).entered == 1
    survivor = await _profile_id(reads, "user_id", "cy")
    assert _agree(await reads.every_read("viewers", "user_id", "cy"), survivor, True) > first

    await reads.send([{"user_id": "cy", "anonymous_id": "anon-3", "traits": {}, "days_ago": 0}])
    gap = _agree(await reads.every_read("viewers", "anonymous_id", "anon-3"), survivor, True)
    assert gap == first
    assert (await reads.recompute()).entered == 0
    for id_type, id_value in (("user_id", "cy"), ("anonymous_id", "anon-3")):
        assert _agree(await reads.every_read("viewers", id_type, id_value), survivor, True) == first
