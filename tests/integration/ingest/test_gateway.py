"""The Segment-compatible HTTP gateway, driven by the real Segment and RudderStack
Python clients from PyPI: their events are stored with fields intact and a re-sent
batch is not stored twice."""

import asyncio
import base64
import gzip
import uuid

import aiohttp
import orjson
import pytest
import rudderstack.analytics as rudder_analytics
import segment.analytics as segment_analytics

from services.ingest.app import components
from services.ingest.gateway import Gateway, build_app
from services.shared.clock import SystemClock
from tests.integration.ingest.support import stored_events

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway_url(resources):  # type: ignore[no-untyped-def]
    # Real clients stamp events with the wall clock; validate against the same time.
    resources.clock.set(SystemClock().now_us())
    gateway = Gateway(build_app(components(resources).ingestor, resources.keys), "127.0.0.1", 0)
    port = await gateway.start()
    yield f"http://127.0.0.1:{port}"
    await gateway.stop()


def _segment_send(url: str, key: str, message_ids: list[str]) -> None:
    client = segment_analytics.Client(write_key=key, host=url, sync_mode=True, gzip=True)
    client.identify("seg-user", {"plan": "pro", "email": "seg@x.io"}, message_id=message_ids[0])
    client.track(
        "seg-user", "Order Completed", {"total": 12.5, "items": [1, 2]}, message_id=message_ids[1]
    )
    client.page("seg-user", name="Home", properties={"path": "/"}, message_id=message_ids[2])
    client.flush()


def _rudder_send(url: str, key: str, message_ids: list[str]) -> None:
    rudder_analytics.write_key = key
    rudder_analytics.dataPlaneUrl = url
    rudder_analytics.sync_mode = True
    rudder_analytics.identify("rs-user", {"plan": "team"}, message_id=message_ids[0])
    rudder_analytics.track(
        "rs-user",
        "Signed Up",
        {"source": "ad"},
        message_id=message_ids[1],
        anonymous_id="rs-anon",
    )
    rudder_analytics.flush()


async def test_segment_client_events_arrive_intact_and_once(
    gateway_url, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    ids = [str(uuid.uuid4()) for _ in range(3)]
    await asyncio.to_thread(_segment_send, gateway_url, workspace.ingest, ids)
    await asyncio.to_thread(_segment_send, gateway_url, workspace.ingest, ids)  # a re-send
    rows = {r["message_id"]: r for r in await stored_events(resources.engine)}
    assert sorted(rows) == sorted(ids)
    identify, track, page = (rows[i] for i in ids)
    assert (identify["type"], identify["user_id"], identify["traits"]) == (
        "identify",
        "seg-user",
        {"plan": "pro", "email": "seg@x.io"},
    )
    assert (track["name"], track["properties"]) == (
        "Order Completed",
        {"total": 12.5, "items": [1, 2]},
    )
    assert track["context"]["library"]["name"] == "analytics-python"
    assert (page["type"], page["name"], page["properties"]) == ("page", "Home", {"path": "/"})
    assert identify["profile_id"] == track["profile_id"] == page["profile_id"]


async def test_rudder_client_events_arrive_intact_and_once(
    gateway_url, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    ids = [str(uuid.uuid4()) for _ in range(2)]
    await asyncio.to_thread(_rudder_send, gateway_url, workspace.ingest, ids)
    await asyncio.to_thread(_rudder_send, gateway_url, workspace.ingest, ids)
    rows = {r["message_id"]: r for r in await stored_events(resources.engine)}
    assert sorted(rows) == sorted(ids)
    identify, track = rows[ids[0]], rows[ids[1]]
    # RudderStack sends identify traits only in context.traits.
    assert identify["traits"] == {"plan": "team"}
    assert (track["user_id"], track["anonymous_id"], track["properties"]) == (
        "rs-user",
        "rs-anon",
        {"source": "ad"},
    )


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


async def test_gateway_rejects_bad_keys_and_bodies_changing_nothing(
    gateway_url, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    body = orjson.dumps(
        {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "h1"}]}
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway_url}/v1/batch", data=body) as reply:
            assert reply.status == 401
        async with http.post(
            f"{gateway_url}/v1/batch",
            data=body,
            headers={"Authorization": _basic(workspace.profile)},
        ) as reply:
            assert reply.status == 403
        async with http.post(
            f"{gateway_url}/v1/batch",
            data=b"{nope",
            headers={"Authorization": _basic(workspace.ingest)},
        ) as reply:
            assert reply.status == 400
        mixed = {
            "batch": [
                {"type": "track", "userId": "u", "event": "E", "messageId": "ok1"},
                {"type": "track", "userId": "u", "messageId": "bad1"},
                {
                    "type": "track",
                    "userId": "u",
                    "event": "E",
                    "messageId": "bad2",
                    "timestamp": "yesterday",
                },
            ]
        }
        async with http.post(
            f"{gateway_url}/v1/batch",
            data=gzip.compress(orjson.dumps(mixed)),
            headers={"Authorization": _basic(workspace.ingest), "Content-Encoding": "gzip"},
        ) as reply:
            assert reply.status == 200
            answer = await reply.json()
        assert answer["accepted"] == 1
        assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
            (1, "events[1].event"),
            (2, "events[2].timestamp"),
        ]
        async with http.post(
            f"{gateway_url}/v1/identify",
            data=orjson.dumps({"userId": "u", "traits": {"a": 1}, "messageId": "one"}),
            headers={"Authorization": _basic(workspace.ingest)},
        ) as reply:
            assert reply.status == 200
    assert [r["message_id"] for r in await stored_events(resources.engine)] == ["ok1", "one"]


async def test_browsers_may_send_from_any_origin_by_default(
    gateway_url, resources, workspace
) -> None:  # type: ignore[no-untyped-def]
    origin = {"Origin": "https://shop.example"}
    async with aiohttp.ClientSession() as http:
        async with http.options(
            f"{gateway_url}/v1/import",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        ) as reply:
            assert reply.status == 204
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in reply.headers["Access-Control-Allow-Methods"]
            allowed = reply.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed
        # analytics.js's shape: text/plain (no preflight) with the key in the body.
        body = {"writeKey": workspace.ingest, "batch": [{"type": "track", "userId": "b",
                "event": "Viewed", "messageId": "browser1"}]}  # fmt: skip
        async with http.post(
            f"{gateway_url}/v1/import",
            data=orjson.dumps(body),
            headers={**origin, "Content-Type": "text/plain;charset=UTF-8"},
        ) as reply:
            assert reply.status == 200
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
        # Errors too, so a browser SDK can read why.
        async with http.post(
            f"{gateway_url}/v1/batch", data=b"{}", headers={**origin, "Authorization": "Basic !"}
        ) as reply:
            assert reply.status == 401
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
            assert "Authorization header" in (await reply.json())["error"]
    assert [r["message_id"] for r in await stored_events(resources.engine)] == ["browser1"]


async def test_only_the_configured_origins_are_allowed(resources, workspace) -> None:  # type: ignore[no-untyped-def]
    app = build_app(components(resources).ingestor, resources.keys, ["https://shop.example"])
    gateway = Gateway(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{await gateway.start()}/v1/track"
    preflight = {"Access-Control-Request-Method": "POST"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.options(
                url, headers={**preflight, "Origin": "https://shop.example"}
            ) as reply:
                assert reply.status == 204
                assert reply.headers["Access-Control-Allow-Origin"] == "https://shop.example"
                assert reply.headers["Vary"] == "Origin"
            async with http.options(
                url, headers={**preflight, "Origin": "https://evil.example"}
            ) as reply:
                assert reply.status == 403
                assert "Access-Control-Allow-Origin" not in reply.headers
            async with http.post(
                url, data=b"{}", headers={"Origin": "https://evil.example"}
            ) as reply:
                assert reply.status == 401
                assert "Access-Control-Allow-Origin" not in reply.headers
    finally:
        await gateway.stop()
