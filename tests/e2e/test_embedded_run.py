"""`make run`'s path: the dev runner on the embedded default (SQLite file + the
Redis-compatible store it serves on a loopback port) brings up all five services and
the realtime worker in one process with nothing else installed, creates the demo
workspace, serves real calls, and comes back after a restart (clean or SIGKILL) with
every profile, audience and membership readable; `python -m services.<name>
rebuild-hot-state` acts on the store the services read."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
import redis.asyncio as redis_asyncio
from audiences.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
)

from services.shared.config import DEFAULT_PORTS
from tests.helpers.backends import free_port
from tests.helpers.grpc_client import bearer, wait_serving
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.e2e

ADA = common_pb2.Identifier(type="email", value="ada@example.com")


class EmbeddedRun:
    """`python -m services.dev_runner` in `folder` on the embedded default, on free ports
    (the same ones at every start, as `make run`'s fixed ports are)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ports = {name: free_port() for name in DEFAULT_PORTS}
        self.addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        self.http_port = free_port()
        self.store_address = f"127.0.0.1:{free_port()}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "GRPC_PORT")
        }
        self.env.update(
            {f"{name.upper()}_ADDR": address for name, address in self.addresses.items()}
        )
        self.env.update(
            {
                "INGEST_HTTP_PORT": "0",
                "PROFILE_HTTP_PORT": str(self.http_port),
                "EMBEDDED_REDIS_ADDR": self.store_address,
                "OTEL_TRACES_EXPORTER": "none",
            }
        )
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def keys(self) -> dict[str, str]:
        """The demo workspace's keys, as `make run` keeps them."""
        return json.loads((self.folder / "var" / "demo-workspace.json").read_text())

    async def command(self, *args: str, module: str = "services.shared.cli") -> str:
        """Run `python -m MODULE ARGS` beside the run (the `audiences` CLI unless a service
        is named); returns its output."""
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            cwd=self.folder,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
        )
        output, _ = await done.communicate()
        assert done.returncode == 0, output
        return output.decode()

    async def start(self) -> str:
        """Migrate, start the runner, wait until every service serves; returns what the
        runner printed before serving (the hot-state rebuild and the banner)."""
        if self.starts == 0:
            await self.command("migrate")
        self.starts += 1
        printed = self.folder / f"runner-{self.starts}.out"
        with printed.open("wb") as stdout:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.dev_runner",
                cwd=self.folder,
                env=self.env,
                stdout=stdout,
            )
        for address in self.addresses.values():
            await wait_serving(address)
        return printed.read_text()

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum` to the runner and return its exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        status = await asyncio.wait_for(self.process.wait(), 20)
        self.process = None
        return status


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedRun]:
    run = EmbeddedRun(tmp_path)
    await run.start()
    try:
        yield run
    finally:
        if run.process is not None:
            assert await run.stop() == 0
    assert (tmp_path / "var" / "audiences.db").exists()


async def _send(run: EmbeddedRun, *events: ingest_pb2.Event) -> None:
    async with grpc.aio.insecure_channel(run.addresses["ingest"]) as channel:
        sent = await ingest_pb2_grpc.IngestServiceStub(channel).Batch(
            ingest_pb2.BatchRequest(events=list(events)), metadata=bearer(run.keys["ingest_key"])
        )
    assert sent.accepted == len(events), sent


async def _profile(run: EmbeddedRun, identifier: common_pb2.Identifier) -> profile_pb2.Profile:
    async with grpc.aio.insecure_channel(run.addresses["profile"]) as channel:
        return await profile_pb2_grpc.ProfileServiceStub(channel).GetProfile(
            profile_pb2.GetProfileRequest(identifier=identifier),
            metadata=bearer(run.keys["profile_key"]),
        )


async def _http_view(run: EmbeddedRun, section: str) -> Any:
    user = base64.b64encode(f"{run.keys['profile_key']}:".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{run.http_port}/v1/profiles/email:{ADA.value}/{section}",
            headers={"Authorization": f"Basic {user}"},
        ) as reply,
    ):
        return reply.status, await reply.json()


async def _members(run: EmbeddedRun, audience_key: str) -> list[str]:
    async with grpc.aio.insecure_channel(run.addresses["segmentation"]) as channel:
        reply = await segmentation_pb2_grpc.SegmentationServiceStub(channel).ListMembers(
            segmentation_pb2.ListMembersRequest(audience_key=audience_key),
            metadata=bearer(run.keys["admin_key"]),
        )
    return [member.profile.profile_id for member in reply.members]


async def _ada_with_an_audience_and_a_computed_trait(run: EmbeddedRun) -> profile_pb2.Profile:
    """Ada's events, an audience and a computed trait she is in; her profile once the
    backfills have reached it."""
    await _send(
        run,
        ingest_pb2.Event(
            message_id="ada-1",
            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
            user_id="ada",
            traits=orjson.dumps({"email": ADA.value, "plan": "pro"}),
        ),
        ingest_pb2.Event(
            message_id="ada-2", type=ingest_pb2.EVENT_TYPE_TRACK, user_id="ada", event="Order"
        ),
    )
    admin = bearer(run.keys["admin_key"])
    async with grpc.aio.insecure_channel(run.addresses["segmentation"]) as channel:
        segmentation = segmentation_pb2_grpc.SegmentationServiceStub(channel)
        await segmentation.CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="pro",
                    definition=orjson.dumps(
                        {"trait": {"name": "plan", "op": "eq", "value": "pro"}}
                    ),
                )
            ),
            metadata=admin,
        )
        await segmentation.CreateComputedTrait(
            segmentation_pb2.CreateComputedTraitRequest(
                computed_trait=segmentation_pb2.ComputedTrait(
                    key="orders", definition=orjson.dumps({"type": "event_count", "event": "Order"})
                )
            ),
            metadata=admin,
        )

    async def backfilled() -> profile_pb2.Profile | None:
        profile = await _profile(run, ADA)
        done = [a.key for a in profile.audiences] == ["pro"] and orjson.loads(
            profile.computed_traits or b"{}"
        ) == {"orders": 1}
        return profile if done else None

    return await eventually(backfilled, 30, "ada's audience and computed trait")


async def test_all_five_serve_on_the_embedded_default(embedded: EmbeddedRun) -> None:
    keys = embedded.keys
    async with grpc.aio.insecure_channel(embedded.addresses["ingest"]) as channel:
        workspace = await admin_pb2_grpc.AdminServiceStub(channel).GetWorkspace(
            admin_pb2.GetWorkspaceRequest(), metadata=bearer(keys["admin_key"])
        )
    assert workspace.id == keys["workspace_id"] and workspace.name == "demo"
    await _send(
        embedded,
        ingest_pb2.Event(
            message_id="embedded-1",
            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
            user_id="ada",
            traits=orjson.dumps({"plan": "pro"}),
        ),
    )
    profile = await _profile(embedded, common_pb2.Identifier(type="user_id", value="ada"))
    assert orjson.loads(profile.traits) == {"plan": "pro"}


async def test_the_realtime_worker_runs_beside_them(embedded: EmbeddedRun) -> None:
    # A realtime audience created before any event: only the worker can admit Ada.
    async with grpc.aio.insecure_channel(embedded.addresses["segmentation"]) as channel:
        await segmentation_pb2_grpc.SegmentationServiceStub(channel).CreateAudience(
            segmentation_pb2.CreateAudienceRequest(
                audience=segmentation_pb2.Audience(
                    key="buyers",
                    definition=orjson.dumps({"event": {"name": "Order"}}),
                    realtime=True,
                )
            ),
            metadata=bearer(embedded.keys["admin_key"]),
        )
    await _send(
        embedded,
        ingest_pb2.Event(
            message_id="rt-1", type=ingest_pb2.EVENT_TYPE_TRACK, user_id="ada", event="Order"
        ),
    )

    async def ada_in() -> bool:
        return len(await _members(embedded, "buyers")) == 1

    await eventually(ada_in, 30, "ada enters the realtime audience with no Recompute")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "sigkill"])
async def test_a_restart_keeps_profiles_audiences_and_memberships(
    embedded: EmbeddedRun, stop_signal: int
) -> None:
    before = await _ada_with_an_audience_and_a_computed_trait(embedded)
    http_before = [await _http_view(embedded, s) for s in ("traits", "audiences")]
    members_before = await _members(embedded, "pro")
    assert members_before == [before.profile_id]

    assert await embedded.stop(stop_signal) == (0 if stop_signal == signal.SIGTERM else -9)
    printed = await embedded.start()

    assert await _profile(embedded, ADA) == before
    assert [await _http_view(embedded, s) for s in ("traits", "audiences")] == http_before
    assert http_before[1][0] == 200 and list(http_before[1][1]["audiences"]) == ["pro"]
    assert await _members(embedded, "pro") == members_before
    # The rebuild said what it did.
    assert "rebuilding the hot state of 1 workspace(s) from the database" in printed
    assert f"{embedded.keys['workspace_id']} ingest: 1 profiles" in printed
    assert "1 audiences (1 memberships), 1 computed traits (1 values)" in printed
    # New events for a known user find her profile as it was.
    await _send(
        embedded,
        ingest_pb2.Event(
            message_id="ada-3",
            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
            user_id="ada",
            traits=orjson.dumps({"seats": 3}),
        ),
    )
    after = await _profile(embedded, ADA)
    assert orjson.loads(after.traits) == {"email": ADA.value, "plan": "pro", "seats": 3}
    assert [a.key for a in after.audiences] == ["pro"]


async def test_rebuild_hot_state_acts_on_the_running_store(embedded: EmbeddedRun) -> None:
    before = await _ada_with_an_audience_and_a_computed_trait(embedded)
    # Lose the hot state under the running services (what a restart did before).
    store = redis_asyncio.Redis.from_url(f"redis://{embedded.store_address}/0")
    try:
        await store.flushall()
    finally:
        await store.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await _profile(embedded, ADA)
    assert lost.value.code() == grpc.StatusCode.NOT_FOUND

    printed = await embedded.command("rebuild-hot-state", module="services.ingest")
    printed += await embedded.command("rebuild-hot-state", module="services.segmentation")

    assert "1 audiences (1 memberships), 1 computed traits (1 values)" in printed
    assert await _profile(embedded, ADA) == before
