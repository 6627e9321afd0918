"""Realtime sync latency and throughput, through the real processes (ingest,
segmentation, the realtime worker and one sync process) on Postgres and Redis.

    TEST_REDIS_DB=2 .venv/bin/python bench/sync_realtime.py --rate 1000 --seconds 10

Latency: events for new users are sent to ingest's Batch at `--rate` events/s (batches
of `--batch`, open loop: each batch leaves at its scheduled instant whatever the
previous ones are doing); each event makes its user enter a realtime audience. For
each user it measures the time from ingest's acknowledgement to
  - the change's entry on `stream:changes` (the realtime worker's share: the
    baseline, read by this process with XREAD), and
  - the change's arrival at a webhook on loopback (what the destination sees).
The difference is what the realtime sync adds.

Throughput: `--changes` enter records are written to the change log at once, with
their stream entries (as the worker appends them), and the time until the realtime
sync delivered them all is compared with one RunSync of the same records by a
one-time sync of the same audience in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as redis_asyncio
from aiohttp import web
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiences.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)

from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from services.shared.streams import CHANGES_STREAM
from services.shared.timestamps import timestamp_from_us
from services.sync.destinations.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import make_workspace
from tests.helpers import backends
from tests.helpers.audiences import wait_live
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.realtime import realtime_worker
from tests.helpers.servers import as_processes
from tests.helpers.waiting import eventually

SECRET = "bench-secret"
T0 = 1_735_689_600_000_000


class Hook:
    """A webhook on loopback recording when each change (by profile id) arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.count = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        if not verify(
            SECRET, request.headers[TIMESTAMP_HEADER], body, request.headers[SIGNATURE_HEADER]
        ):
            return web.Response(status=401)
        for change in orjson.loads(body)["changes"]:
            self.arrived.setdefault(change["profile_id"], now)
            self.count += 1
        return web.Response(text="ok")


@asynccontextmanager
async def serving(hook: Hook) -> AsyncIterator[Hook]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def watch_stream(
    redis: redis_asyncio.Redis, seen: dict[str, float], stop: asyncio.Event
) -> None:
    """Record when each change entry (by profile id) appears on the changes stream."""
    last = "$"
    while not stop.is_set():
        reply = await redis.xread({CHANGES_STREAM: last}, count=1000, block=100)
        now = time.monotonic()
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                seen.setdefault(fields[b"profile_id"].decode(), now)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=10, help="events per Batch call")
    parser.add_argument("--changes", type=int, default=20_000)
    args = parser.parse_args()
    url = await backends.create_database()
    dsn = backends.asyncpg_dsn(url)
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    redis_url = backends.test_redis_url()
    redis = redis_asyncio.Redis.from_url(redis_url)
    await redis.flushdb(asynchronous=True)
    resources = await Resources.open(Settings(database_url=url, redis_url=redis_url), "bench")
    env = {
        "SYNC_SECRET_KEY": Fernet.generate_key().decode(),
        "SYNC_SCHEDULER_INTERVAL_SECONDS": "3600",
        "SEGMENTATION_RECONCILE_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
    }
    try:
        keys = await make_workspace(resources, "bench")
        ws = keys.workspace_id
        admin, write = bearer(keys.admin), bearer(keys.ingest)
        names = ["ingest", "segmentation", "sync"]
        async with (
            as_processes(url, redis_url, names, env) as at,
            realtime_worker(url, redis_url, "bench", {**env, "REALTIME_BLOCK_MS": "50"}),
            serving(Hook()) as hook,
            channel(at["segmentation"]) as seg_ch,
            channel(at["sync"]) as sync_ch,
            channel(at["ingest"]) as ingest_ch,
        ):
            seg = segmentation_pb2_grpc.SegmentationServiceStub(seg_ch)
            sync_api = sync_pb2_grpc.SyncServiceStub(sync_ch)
            ingest = ingest_pb2_grpc.IngestServiceStub(ingest_ch)
            definition = {"event": {"name": "Bought", "window": {"within_days": 7}}}
            await seg.CreateAudience(
                segmentation_pb2.CreateAudienceRequest(
                    audience=segmentation_pb2.Audience(
                        key="buyers", definition=orjson.dumps(definition), realtime=True
                    )
                ),
                metadata=admin,
            )
            await wait_live(seg, "buyers", admin)
            destination = await sync_api.CreateDestination(
                sync_pb2.CreateDestinationRequest(
                    destination=sync_pb2.Destination(
                        name="hook",
                        kind=sync_pb2.DESTINATION_KIND_WEBHOOK,
                        base_url=hook.url,
                        secret=SECRET,
                    )
                ),
                metadata=admin,
            )

            async def new_sync(cadence: int) -> sync_pb2.Sync:
                return await sync_api.CreateSync(
                    sync_pb2.CreateSyncRequest(
                        sync=sync_pb2.Sync(
                            destination_id=destination.id,
                            source=sync_pb2.SYNC_SOURCE_AUDIENCE,
                            source_key="buyers",
                            id_type="user_id",
                            cadence=cadence,
                            max_removal_fraction=1.0,
                        )
                    ),
                    metadata=admin,
                )

            realtime = await new_sync(sync_pb2.SYNC_CADENCE_REALTIME)

            async def backfilled() -> bool:
                runs = await sync_api.ListSyncRuns(
                    sync_pb2.ListSyncRunsRequest(sync_id=realtime.id), metadata=admin
                )
                return any(r.status == "succeeded" for r in runs.runs)

            await eventually(backfilled, 30, "the realtime sync's backfill")

            # ---- latency at --rate events/s
            acked: dict[str, float] = {}  # user id -> ingest ack
            seen: dict[str, float] = {}  # profile id -> stream entry
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch_stream(redis, seen, stop))
            total = int(args.rate * args.seconds)
            now_us = time.time_ns() // 1000

            async def send(first: int) -> None:
                events = []
                for i in range(first, min(total, first + args.batch)):
                    event = ingest_pb2.Event(
                        type=ingest_pb2.EVENT_TYPE_TRACK,
                        user_id=f"u{i}",
                        event="Bought",
                        message_id=f"m{i}",
                    )
                    event.timestamp.CopyFrom(timestamp_from_us(now_us))
                    events.append(event)
                reply = await ingest.Batch(ingest_pb2.BatchRequest(events=events), metadata=write)
                assert reply.accepted == len(events), reply
                done = time.monotonic()
                for e in events:
                    acked[e.user_id] = done

            started = time.monotonic()
            tasks = []
            for k, first in enumerate(range(0, total, args.batch)):
                delay = started + k * args.batch / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(first)))
            await asyncio.gather(*tasks)
            sent_in = time.monotonic() - started

            async def all_arrived() -> bool:
                return len(hook.arrived) >= total

            await eventually(all_arrived, 120, "every change at the webhook", every=0.2)
            stop.set()
            await watcher
            pid_user = await _pid_users(dsn, ws)
            to_stream, to_hook, added = [], [], []
            for pid, arrived in hook.arrived.items():
                ack = acked[pid_user[int(pid)]]
                to_hook.append(arrived - ack)
                if pid in seen:
                    to_stream.append(seen[pid] - ack)
                    added.append(arrived - seen[pid])
            print(
                f"sent {total} events in {sent_in:.1f}s ({total / sent_in:,.0f}/s), "
                f"batches of {args.batch}"
            )
            print()
            print("| ingest ack to ... | n | median ms | p99 ms | ratio p99 vs stream |")
            print("|---|---|---|---|---|")
            base = pct(to_stream, 0.99)
            for name, values in (
                ("changes stream entry (baseline: realtime worker)", to_stream),
                ("webhook delivery (realtime sync)", to_hook),
                ("stream entry to webhook (sync's share)", added),
            ):
                print(
                    f"| {name} | {len(values)} | {statistics.median(values) * 1e3:.0f} | "
                    f"{pct(values, 0.99) * 1e3:.0f} | {pct(values, 0.99) / base:.2f}x |"
                )

            runs = await sync_api.ListSyncRuns(
                sync_pb2.ListSyncRunsRequest(sync_id=realtime.id, page_size=1000), metadata=admin
            )
            durations = [r.duration_ms for r in runs.runs]
            sizes = [r.added for r in runs.runs]
            print(
                f"realtime runs: {len(durations)} (newest 1000), "
                f"median {statistics.median(durations):.0f} ms, "
                f"p99 {pct(durations, 0.99):.0f} ms, "
                f"median {statistics.median(sizes):.0f} changes each"
            )

            # ---- throughput: --changes at once
            one_time = await new_sync(sync_pb2.SYNC_CADENCE_ONE_TIME)
            await sync_api.RunSync(sync_pb2.RunSyncRequest(id=one_time.id), metadata=admin)
            audience_id = await _audience_id(dsn, ws)
            first = await _load(dsn, ws, audience_id, args.changes)
            before = hook.count
            started = time.monotonic()
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(args.changes):
                    pipe.xadd(
                        CHANGES_STREAM,
                        {
                            "kind": "entered",
                            "workspace_id": ws,
                            "seq": str(first + n),
                            "audience_id": str(audience_id),
                            "audience_key": "buyers",
                            "profile_id": str(first + n),
                            "at_us": str(T0),
                            "version": "1",
                        },
                    )
                await pipe.execute()

            async def drained() -> bool:
                return hook.count - before >= args.changes

            await eventually(drained, 300, "the realtime sync to drain", every=0.1)
            realtime_took = time.monotonic() - started
            started = time.monotonic()
            run = await sync_api.RunSync(sync_pb2.RunSyncRequest(id=one_time.id), metadata=admin)
            run_took = time.monotonic() - started
            assert run.added == args.changes, run
            print()
            print("| delivery of changes at once | changes | seconds | changes/s | ratio |")
            print("|---|---|---|---|---|")
            print(
                f"| RunSync, one-time sync (baseline) | {args.changes} | {run_took:.2f} | "
                f"{args.changes / run_took:,.0f} | 1.00x |"
            )
            print(
                f"| realtime sync (stream entries) | {args.changes} | {realtime_took:.2f} | "
                f"{args.changes / realtime_took:,.0f} | {run_took / realtime_took:.2f}x |"
            )
    finally:
        await resources.close()
        await redis.aclose()
        await backends.drop_database(url)


async def _pid_users(dsn: str, ws: str) -> dict[int, str]:
    c = await asyncpg.connect(dsn)
    try:
        rows = await c.fetch(
            "SELECT p.canonical_id, i.id_value FROM identities i"
            " JOIN profiles p ON p.profile_id = i.profile_id"
            " WHERE i.workspace_id = $1 AND i.id_type = 'user_id'",
            ws,
        )
        return {r[0]: r[1] for r in rows}
    finally:
        await c.close()


async def _audience_id(dsn: str, ws: str) -> int:
    c = await asyncpg.connect(dsn)
    try:
        return int(
            await c.fetchval(
                "SELECT audience_id FROM audiences WHERE workspace_id = $1 AND key = 'buyers'", ws
            )
        )
    finally:
        await c.close()


async def _load(dsn: str, ws: str, audience_id: int, n: int) -> int:
    """n new profiles with a user id, each with an enter record (seq = profile id,
    above every seq so far) as the realtime worker commits them; the first id."""
    c = await asyncpg.connect(dsn)
    try:
        async with c.transaction():
            top = max(
                int(await c.fetchval("SELECT coalesce(max(profile_id), 0) FROM profiles")),
                int(
                    await c.fetchval(
                        "SELECT coalesce(max(seq), 0) FROM membership_changes"
                        " WHERE workspace_id = $1",
                        ws,
                    )
                ),
            )
            first = top + 1
            pids = range(first, first + n)
            await c.copy_records_to_table(
                "profiles",
                records=[(p, ws, p, T0) for p in pids],
                columns=["profile_id", "workspace_id", "canonical_id", "created_at_us"],
            )
            await c.copy_records_to_table(
                "identities",
                records=[(ws, "user_id", f"bulk{p}", p, T0) for p in pids],
                columns=["workspace_id", "id_type", "id_value", "profile_id", "first_seen_us"],
            )
            await c.copy_records_to_table(
                "membership_changes",
                records=[(ws, p, audience_id, p, "entered", T0, 1) for p in pids],
                columns=[
                    "workspace_id",
                    "seq",
                    "audience_id",
                    "profile_id",
                    "kind",
                    "at_us",
                    "version",
                ],
            )
            await c.execute(
                "UPDATE change_sequences SET last_seq = $2 WHERE workspace_id = $1",
                ws,
                first + n - 1,
            )
        await c.execute("ANALYZE")
        return first
    finally:
        await c.close()


if __name__ == "__main__":
    asyncio.run(main())
