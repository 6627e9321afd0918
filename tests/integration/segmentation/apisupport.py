"""The segmentation API on real servers for integration tests: ingest and segmentation
in this process on port 0, over the per-test Postgres database and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from audiences.v1 import (
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.shared.clock import US_PER_DAY
from services.shared.timestamps import timestamp_from_us
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import in_process

TYPES = {
    "track": ingest_pb2.EVENT_TYPE_TRACK,
    "identify": ingest_pb2.EVENT_TYPE_IDENTIFY,
    "page": ingest_pb2.EVENT_TYPE_PAGE,
    "group": ingest_pb2.EVENT_TYPE_GROUP,
}


@dataclass
class Api:
    ingest: ingest_pb2_grpc.IngestServiceStub
    seg: segmentation_pb2_grpc.SegmentationServiceStub
    admin: tuple[tuple[str, str], ...]
    write: tuple[tuple[str, str], ...]
    now_us: int

    async def send(self, events: Sequence[dict[str, Any]]) -> list[int]:
        """Send events through ingest's Batch; returns their seqs (all must be accepted)."""
        messages = []
        for i, e in enumerate(events):
            m = ingest_pb2.Event(
                type=TYPES[e.get("type", "track")],
                message_id=e.get("message_id", f"m{time.monotonic_ns()}-{i}"),
                user_id=e.get("user_id", ""),
                anonymous_id=e.get("anonymous_id", ""),
                group_id=e.get("group_id", ""),
                event=e.get("event", ""),
                properties=orjson.dumps(e["properties"]) if "properties" in e else b"",
                traits=orjson.dumps(e["traits"]) if "traits" in e else b"",
            )
            m.timestamp.CopyFrom(
                timestamp_from_us(self.now_us - int(e.get("days_ago", 1) * US_PER_DAY))
            )
            messages.append(m)
        reply = await self.ingest.Batch(
            ingest_pb2.BatchRequest(events=messages), metadata=self.write
        )
        assert reply.accepted == len(events), reply
        return [r.seq for r in reply.results]

    async def create(
        self, key: str, definition: Any, account_level: bool = False, **kw: Any
    ) -> segmentation_pb2.Audience:
        return await self.seg.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key=key, definition=orjson.dumps(definition), account_level=account_level
                ),
                **kw,
            ),
            metadata=self.admin,
        )

    async def live(
        self, key: str, version: int = 1, within: float = 20
    ) -> segmentation_pb2.Audience:
        """Poll GetAudience until `version` is LIVE (a deadline, not a fixed sleep)."""
        return await wait_live(self.seg, key, self.admin, version, within)

    async def computed_live(self, key: str, version: int = 1, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while True:
            c = await self.seg.GetComputedTrait(
                segmentation_pb2.GetComputedTraitRequest(key=key), metadata=self.admin
            )
            if c.state == segmentation_pb2.AUDIENCE_STATE_LIVE and c.version == version:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"computed trait {key} not live: {c}")
            await asyncio.sleep(0.02)

    async def members(self, key: str, page_size: int = 0) -> list[str]:
        """User ids (or anon:<id>) of every member, following page tokens."""
        out: list[str] = []
        token = ""
        while True:
            page = await self.seg.ListMembers(
                segmentation_pb2.ListMembersRequest(
                    audience_key=key, page_size=page_size, page_token=token
                ),
                metadata=self.admin,
            )
            out += [name_of(m.profile) for m in page.members]
            token = page.next_page_token
            if not token:
                return out

    async def changes(self, after: int = 0) -> list[segmentation_pb2.MembershipChange]:
        """Every change after `after` that exists now (the stream is read to its end)."""
        got: list[segmentation_pb2.MembershipChange] = []
        call = self.seg.WatchChanges(
            segmentation_pb2.WatchChangesRequest(after_seq=after), metadata=self.admin
        )
        try:
            while True:
                try:
                    got.append(await asyncio.wait_for(call.read(), timeout=1.0))
                except TimeoutError:
                    return got
        finally:
            call.cancel()


def name_of(ref: common_pb2.ProfileRef) -> str:
    """The conformance naming: user_id, else anon:<anonymous_id>."""
    ids = {(i.type, i.value) for i in ref.identifiers}
    users = sorted(v for t, v in ids if t == "user_id")
    if users:
        return users[0]
    anons = sorted(v for t, v in ids if t == "anonymous_id")
    return f"anon:{anons[0]}" if anons else f"#{ref.profile_id}"


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    from services.shared.errors import field_violations

    return {v.field: v.description for v in field_violations(error)}


@pytest.fixture
async def api(resources, workspace, clock) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with in_process(resources, ["ingest", "segmentation"]) as addresses:
        ingest = grpc.aio.insecure_channel(addresses["ingest"])
        seg = grpc.aio.insecure_channel(addresses["segmentation"])
        yield Api(
            ingest_pb2_grpc.IngestServiceStub(ingest),
            segmentation_pb2_grpc.SegmentationServiceStub(seg),
            bearer(workspace.admin),
            bearer(workspace.ingest),
            clock.now_us(),
        )
        await ingest.close()
        await seg.close()
