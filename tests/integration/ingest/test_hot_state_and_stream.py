"""Hot-state rebuild from Postgres, and StreamEvents over a bidirectional stream."""

import asyncio
import os
import sys

import orjson
import pytest
from audiences.v1 import ingest_pb2

from services.ingest.app import SPEC as INGEST
from services.segmentation.app import SPEC as SEGMENTATION
from services.shared import hotstate
from services.shared.rebuild import rebuild_hot_state
from tests.helpers.grpc_client import bearer
from tests.integration.ingest.support import NOW_US, event, stored_events

pytestmark = pytest.mark.integration


async def _hot_snapshot(redis, workspace_id: str) -> dict:  # type: ignore[no-untyped-def]
    snapshot = {}
    async for key in redis.scan_iter(match=f"{hotstate.workspace_prefix(workspace_id)}*"):
        kind = await redis.type(key)
        snapshot[key] = await (redis.hgetall(key) if kind == b"hash" else redis.get(key))
    return snapshot


async def test_rebuild_recreates_the_hot_state_from_postgres(
    stub, settings, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    await stub.Batch(
        ingest_pb2.BatchRequest(
            events=[
                event("track", "h1", anonymous_id="an", at_us=NOW_US - 50),
                event(
                    "identify",
                    "h2",
                    user_id="u",
                    at_us=NOW_US - 40,
                    traits={"plan": "pro", "email": "u@x.io"},
                ),
                event(
                    "identify",
                    "h3",
                    user_id="u",
                    anonymous_id="an",
                    at_us=NOW_US - 30,
                    traits={"plan": None, "seats": 3},
                ),
                event("identify", "h4", user_id="v", at_us=NOW_US - 20, traits={"k": [1]}),
            ]
        ),
        metadata=bearer(workspace.ingest),
    )
    written_by_ingest = await _hot_snapshot(resources.redis, ws)
    assert written_by_ingest  # the request path wrote it
    for key in written_by_ingest:
        await resources.redis.delete(key)
    # What the database does not hold goes: an identifier and a membership.
    await resources.redis.set(hotstate.identity_key(ws, "user_id", "stale"), "999")
    await resources.redis.hset(hotstate.profile_key(ws, 1, "audiences"), "vip", "1")
    said: list[str] = []
    assert await rebuild_hot_state([INGEST, SEGMENTATION], resources, said.append, [ws]) == 1
    rebuilt = await _hot_snapshot(resources.redis, ws)
    # Segmentation's share adds its request-time audience settings, empty here.
    config_key = hotstate.audience_config_key(ws).encode()
    assert orjson.loads(rebuilt.pop(config_key)[b"config"]) == {
        "context": [],
        "holdouts": {},
        "measured": [],
    }
    assert rebuilt == written_by_ingest
    await resources.redis.delete(config_key)
    assert f"  {ws} ingest: 2 profiles" in said

    # The same as an operator runs it: the service's own command, in a process of its own.
    for key in written_by_ingest:
        await resources.redis.delete(key)
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    command = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "services.ingest", "rebuild-hot-state", "--workspace", ws),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert f"  {ws} ingest: 2 profiles" in out.decode().splitlines()
    assert await _hot_snapshot(resources.redis, ws) == written_by_ingest


async def test_stream_events_acks_every_message(stub, resources, workspace) -> None:  # type: ignore[no-untyped-def]
    async def requests():  # type: ignore[no-untyped-def]
        for chunk in range(3):
            yield ingest_pb2.StreamEventsRequest(
                events=[
                    event("track", f"s{chunk}-{i}", user_id=f"u{i}", at_us=NOW_US - 1)
                    for i in range(4)
                ]
                + [event("track", f"s{chunk}-bad", at_us=NOW_US - 1)]
            )
        yield ingest_pb2.StreamEventsRequest(events=[event("track", "s0-0", user_id="u0")])

    call = stub.StreamEvents(requests(), metadata=bearer(workspace.ingest))
    replies = [reply async for reply in call]
    assert [len(r.results) for r in replies] == [5, 5, 5, 1]
    statuses = [[res.status for res in r.results] for r in replies]
    accepted, rejected = ingest_pb2.EVENT_STATUS_ACCEPTED, ingest_pb2.EVENT_STATUS_REJECTED
    assert statuses[:3] == [[accepted] * 4 + [rejected]] * 3
    assert statuses[3] == [ingest_pb2.EVENT_STATUS_DUPLICATE]
    assert len(await stored_events(resources.engine)) == 12
