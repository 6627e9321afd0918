"""What the sync tests stand on: a writer of segmentation's tables shaped exactly like
the read model sync depends on (docs/sync.md), and a real webhook receiver (an aiohttp
server on loopback) that answers from a script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.segmentation.tables import audiences
from services.shared.db.membership_log import membership_changes, memberships
from services.shared.db.tables import identities, profiles
from services.sync.destinations.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify,
)

T0 = 1_735_689_600_000_000


class MembershipLog:
    """Writes profiles, identities, memberships and change-log records the way
    segmentation commits them (seq monotonic per workspace)."""

    def __init__(self, engine: AsyncEngine, ws: str) -> None:
        self.engine = engine
        self.ws = ws

    async def audience(self, key: str) -> int:
        """Create an audience row; its id."""
        async with self.engine.begin() as c:
            result = await c.execute(
                insert(audiences).values(
                    workspace_id=self.ws,
                    key=key,
                    name=key,
                    current_version=1,
                    backfill=True,
                    account_level=False,
                    created_at_us=T0,
                    updated_at_us=T0,
                )
            )
            return int(result.inserted_primary_key[0])

    async def profile(self, **ids: str) -> int:
        """A profile with the given identifiers (type=value); its id."""
        async with self.engine.begin() as c:
            result = await c.execute(
                insert(profiles).values(workspace_id=self.ws, canonical_id=0, created_at_us=T0)
            )
            pid = int(result.inserted_primary_key[0])
            await c.execute(
                update(profiles).where(profiles.c.profile_id == pid).values(canonical_id=pid)
            )
            for id_type, value in ids.items():
                await c.execute(
                    insert(identities).values(
                        workspace_id=self.ws,
                        id_type=id_type,
                        id_value=value,
                        profile_id=pid,
                        first_seen_us=T0,
                    )
                )
        return pid

    async def members(self, audience_id: int, n: int) -> None:
        """Many members at once (email m<i>@example.com), for exports larger than a chunk."""
        async with self.engine.begin() as c:
            first = (
                await c.execute(select(func.coalesce(func.max(profiles.c.profile_id), 0)))
            ).scalar_one() + 1
            pids = range(first, first + n)
            await c.execute(
                insert(profiles),
                [
                    {
                        "profile_id": p,
                        "workspace_id": self.ws,
                        "canonical_id": p,
                        "created_at_us": T0,
                    }
                    for p in pids
                ],
            )
            await c.execute(
                insert(identities),
                [
                    {
                        "workspace_id": self.ws,
                        "id_type": "email",
                        "id_value": f"m{p}@example.com",
                        "profile_id": p,
                        "first_seen_us": T0,
                    }
                    for p in pids
                ],
            )
            await c.execute(
                insert(memberships),
                [
                    {
                        "workspace_id": self.ws,
                        "audience_id": audience_id,
                        "profile_id": p,
                        "entered_at_us": T0,
                    }
                    for p in pids
                ],
            )

    async def merge(self, merged: int, survivor: int) -> None:
        """Point `merged` at `survivor`, as an identity merge does."""
        async with self.engine.begin() as c:
            await c.execute(
                update(profiles)
                .where(profiles.c.profile_id == merged)
                .values(canonical_id=survivor)
            )

    async def change(self, audience_id: int, pid: int, entered: bool) -> int:
        """Record an enter or exit (and the membership row); its seq."""
        async with self.engine.begin() as c:
            last = (
                await c.execute(
                    select(func.max(membership_changes.c.seq)).where(
                        membership_changes.c.workspace_id == self.ws
                    )
                )
            ).scalar() or 0
            seq = int(last) + 1
            await c.execute(
                insert(membership_changes).values(
                    workspace_id=self.ws,
                    seq=seq,
                    audience_id=audience_id,
                    profile_id=pid,
                    kind="entered" if entered else "exited",
                    at_us=T0 + seq,
                    version=1,
                )
            )
            if entered:
                await c.execute(
                    insert(memberships).values(
                        workspace_id=self.ws,
                        audience_id=audience_id,
                        profile_id=pid,
                        entered_at_us=T0 + seq,
                    )
                )
            else:
                await c.execute(
                    delete(memberships).where(
                        memberships.c.audience_id == audience_id, memberships.c.profile_id == pid
                    )
                )
        return seq


@dataclass
class Received:
    """One POST the receiver got."""

    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class WebhookReceiver:
    """A webhook endpoint that answers the scripted (status, headers, delay) in order,
    then 200; it applies each batch once per idempotency key, as a careful receiver
    does, into `applied` (changes in the order applied)."""

    secret: str
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    seen_keys: set[str] = field(default_factory=set)
    url: str = ""
    # The request with this number (1-based) waits for `release` before it is applied:
    # a test kills the sender while its batch is in flight.
    hold_at: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(body, dict(request.headers)))
        if len(self.requests) == self.hold_at:
            await self.release.wait()
        if self.script:
            status, headers, delay = self.script.pop(0)
            if delay:
                await asyncio.sleep(delay)  # a slow destination, longer than the timeout
            if status >= 300:
                return web.Response(status=status, headers=headers, text=f"scripted {status}")
        if not verify(
            self.secret,
            request.headers[TIMESTAMP_HEADER],
            body,
            request.headers[SIGNATURE_HEADER],
        ):
            return web.Response(status=401, text="bad signature")
        key = request.headers[IDEMPOTENCY_HEADER]
        if key not in self.seen_keys:
            self.seen_keys.add(key)
            document = orjson.loads(body)
            self.applied.extend(document.get("changes") or document.get("events") or [])
        return web.Response(status=200, text="ok")


@asynccontextmanager
async def _serving(route: str, handler: Any) -> AsyncIterator[str]:
    """An aiohttp server on a free loopback port answering POSTs to `route`; its base URL."""
    app = web.Application()
    app.router.add_post(route, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def webhook(
    secret: str,
    script: list[tuple[int, dict[str, str], float]] | None = None,
    hold_at: int | None = None,
) -> AsyncIterator[WebhookReceiver]:
    """A running receiver on a loopback port."""
    receiver = WebhookReceiver(secret, list(script or []), hold_at=hold_at)
    async with _serving("/hook", receiver.handle) as base:
        receiver.url = f"{base}/hook"
        yield receiver


@dataclass
class VendorServer:
    """A fake vendor API: records every request (path, headers, JSON body) and answers
    with `answer(path, body)` -> (status, JSON)."""

    answer: Any
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"null")
        self.requests.append((request.path, dict(request.headers), body))
        status, reply = self.answer(request.path, body)
        return web.json_response(reply, status=status)


@asynccontextmanager
async def vendor(answer: Any) -> AsyncIterator[VendorServer]:
    """A running fake vendor API on a loopback port (every POST path)."""
    server = VendorServer(answer)
    async with _serving("/{tail:.*}", server.handle) as base:
        server.url = base
        yield server
