"""The read-only HTTP JSON view: Segment Profile API shapes behind the same API keys."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import common_pb2, profile_pb2

from services.profile import httpview
from services.profile.app import build
from tests.conftest import make_workspace
from tests.integration.profile.seeding import HotSeed, seed_db_profile, seed_events, seed_hot

pytestmark = pytest.mark.integration

T0 = 1_735_000_000_000_000


@pytest.fixture
async def view(resources):  # type: ignore[no-untyped-def]
    runner, port = await httpview.start(build(resources), resources.keys, "127.0.0.1", 0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        yield session
    await runner.cleanup()


@pytest.fixture
async def ada(resources, workspace, redis_url):  # type: ignore[no-untyped-def]
    ws = workspace.workspace_id
    pid = await seed_db_profile(resources.engine, ws, [("user_id", "u-ada")], T0)
    await seed_events(
        resources.engine,
        ws,
        pid,
        [
            {
                "message_id": f"m{n}",
                "type": "track",
                "name": "Viewed",
                "timestamp_us": T0 + n * 1_000_000,
                "properties": {"n": n},
                "user_id": "u-ada",
            }
            for n in range(5)
        ]
        + [{"message_id": "p0", "type": "page", "name": "Home", "timestamp_us": T0 + 10_000_000}],
    )
    client = redis_asyncio.Redis.from_url(redis_url)
    await seed_hot(
        client,
        ws,
        HotSeed(
            pid,
            [("user_id", "u-ada"), ("email", "ada@example.com")],
            traits={"name": "Ada", "plan": "pro", "n": 2**60},
            audiences={"vip": T0 + 1},
        ),
    )
    await client.aclose()
    return pid


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_traits_in_the_segment_shape_with_basic_or_bearer_auth(view, workspace, ada) -> None:  # type: ignore[no-untyped-def]
    for headers in (basic(workspace.profile), bearer(workspace.profile)):
        async with view.get("/v1/profiles/email:ada@example.com/traits", headers=headers) as reply:
            assert reply.status == 200
            assert reply.content_type == "application/json"
            body = await reply.json()
        assert body == {
            "traits": {"name": "Ada", "plan": "pro", "n": 2**60},
            "cursor": {
                "url": "/v1/profiles/email:ada@example.com/traits",
                "has_more": False,
                "next": "",
            },
        }
    async with view.get(
        "/v1/profiles/user_id:u-ada/traits?include=plan,missing", headers=basic(workspace.profile)
    ) as reply:
        assert (await reply.json())["traits"] == {"plan": "pro"}


async def test_audiences_with_entry_time(view, workspace, ada) -> None:  # type: ignore[no-untyped-def]
    async with view.get(
        "/v1/profiles/user_id:u-ada/audiences", headers=bearer(workspace.profile)
    ) as reply:
        assert reply.status == 200
        body = await reply.json()
    assert body["audiences"] == {
        "vip": {"entered_at": "2024-12-24T00:26:40.000001Z", "holdout": False}
    }


async def test_events_newest_first_with_a_cursor(view, workspace, ada) -> None:  # type: ignore[no-untyped-def]
    seen, url = [], "/v1/profiles/user_id:u-ada/events?limit=4"
    while True:
        async with view.get(url, headers=bearer(workspace.profile)) as reply:
            assert reply.status == 200
            body = await reply.json()
        seen.extend(body["data"])
        if not body["cursor"]["has_more"]:
            break
        url = f"/v1/profiles/user_id:u-ada/events?limit=4&next={body['cursor']['next']}"
    assert [e["message_id"] for e in seen] == ["p0", "m4", "m3", "m2", "m1", "m0"]
    assert seen[0]["name"] == "Home" and seen[0]["type"] == "page"
    assert seen[1]["event"] == "Viewed" and seen[1]["properties"] == {"n": 4}
    assert seen[1]["timestamp"] == "2024-12-24T00:26:44Z"
    async with view.get(
        "/v1/profiles/user_id:u-ada/events?include=Home", headers=bearer(workspace.profile)
    ) as reply:
        assert [e["message_id"] for e in (await reply.json())["data"]] == ["p0"]


@pytest.mark.parametrize(
    ("path", "key", "status", "code"),
    [
        ("/v1/profiles/user_id:u-ada/traits", None, 401, "UNAUTHORIZED"),
        ("/v1/profiles/user_id:u-ada/traits", "aud_not-a-key", 401, "UNAUTHORIZED"),
        ("/v1/profiles/user_id:u-ada/traits", "ingest", 403, "FORBIDDEN"),
        ("/v1/profiles/user_id:nobody/traits", "profile", 404, "NOT_FOUND"),
        ("/v1/profiles/u-ada/traits", "profile", 400, "BAD_REQUEST"),
        ("/v1/profiles/User:u-ada/audiences", "profile", 400, "BAD_REQUEST"),
        ("/v1/profiles/user_id:u-ada/events?limit=0", "profile", 400, "BAD_REQUEST"),
        ("/v1/profiles/user_id:u-ada/events?next=%25%25", "profile", 400, "BAD_REQUEST"),
    ],
)
async def test_errors_are_json_with_the_matching_status(  # type: ignore[no-untyped-def]
    view, workspace, ada, path, key, status, code
) -> None:
    secret = {"ingest": workspace.ingest, "profile": workspace.profile}.get(key, key)
    headers = bearer(secret) if secret else {}
    async with view.get(path, headers=headers) as reply:
        assert reply.status == status
        body = await reply.json()
    assert body["error"]["code"] == code
    if status == 400:
        assert body["error"]["field_violations"]


async def test_another_workspaces_key_sees_nothing(view, resources, workspace, ada) -> None:  # type: ignore[no-untyped-def]
    other = await make_workspace(resources, "globex")
    for section in ("traits", "audiences", "events"):
        async with view.get(
            f"/v1/profiles/user_id:u-ada/{section}", headers=basic(other.profile)
        ) as reply:
            assert reply.status == 404


HUGE = 123456789012345678901234567890  # beyond 64 bits: jsonb keeps it exactly


async def test_timeline_payloads_keep_integers_beyond_64_bits(  # type: ignore[no-untyped-def]
    view, resources, workspace, profile_stub
) -> None:
    ws = workspace.workspace_id
    pid = await seed_db_profile(resources.engine, ws, [("user_id", "u-big")], T0)
    await seed_events(
        resources.engine,
        ws,
        pid,
        [
            {
                "message_id": "big",
                "type": "track",
                "name": "Ordered",
                "timestamp_us": T0,
                "properties": {"order_id": HUGE, "total": 1.5},
                "context": {"ip": "10.0.0.1"},
            }
        ],
    )
    async with view.get(
        "/v1/profiles/user_id:u-big/events", headers=bearer(workspace.profile)
    ) as reply:
        assert reply.status == 200
        # The standard library's parser keeps big integers exact; orjson's would not.
        (event,) = json.loads(await reply.read())["data"]
    assert event["properties"] == {"order_id": HUGE, "total": 1.5}
    assert event["context"] == {"ip": "10.0.0.1"}
    assert event["traits"] is None
    reply = await profile_stub.ListEvents(
        profile_pb2.ListEventsRequest(
            identifier=common_pb2.Identifier(type="user_id", value="u-big")
        ),
        metadata=(("authorization", f"Bearer {workspace.profile}"),),
    )
    (timeline,) = reply.events
    assert json.loads(timeline.properties) == {"order_id": HUGE, "total": 1.5}
    assert timeline.traits == b""
