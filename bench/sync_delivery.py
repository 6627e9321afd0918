"""Sync throughput on Postgres: CSV export of an audience in each format against
Postgres `COPY TO` of the same ids in the same run, and membership changes delivered
per second to a local webhook by one sync process.

    .venv/bin/python bench/sync_delivery.py --members 1000000 --changes 100000

Members get one email, a third a second email, and a user id. Each format is exported
`--repeat` times, alternating with COPY TO; the table gives medians. The export goes
through the real gRPC API (the sync service in this process on a loopback port) and is read to
the end by a client; COPY TO writes the same people's identifiers to a discarding sink.
The delivery run is one RunSync of `--changes` enter records, batches of 500, to an
aiohttp webhook on loopback that verifies each signature.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import asyncpg
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiences.v1 import sync_pb2, sync_pb2_grpc

from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.conftest import make_workspace
from tests.helpers import backends
from tests.helpers.grpc_client import bearer, channel
from tests.helpers.servers import in_process
from tests.integration.sync.support import webhook

T0 = 1_735_689_600_000_000
FORMATS = {
    "unformatted": {"format": sync_pb2.EXPORT_FORMAT_UNFORMATTED},
    "formatted": {"format": sync_pb2.EXPORT_FORMAT_FORMATTED},
    "single column (sha256)": {"format": sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN, "id_type": "email"},
}
COPY_QUERY = """SELECT p.canonical_id, i.id_type, i.id_value
 FROM memberships m JOIN profiles p ON p.profile_id = m.profile_id
 JOIN identities i ON i.profile_id = p.profile_id
 WHERE m.audience_id = {audience} ORDER BY p.canonical_id"""


async def load(dsn: str, ws: str, members: int, first: int, audience: int) -> None:
    """Profiles first..first+members-1 with identities, members of `audience`."""
    c = await asyncpg.connect(dsn)
    try:
        pids = range(first, first + members)
        await c.copy_records_to_table(
            "profiles",
            records=[(p, ws, p, T0) for p in pids],
            columns=["profile_id", "workspace_id", "canonical_id", "created_at_us"],
        )
        ids = [(ws, "email", f"p{p}@example.com", p, T0) for p in pids]
        ids += [(ws, "email", f"alt{p}@example.com", p, T0) for p in pids if p % 3 == 0]
        ids += [(ws, "user_id", f"u{p}", p, T0) for p in pids]
        await c.copy_records_to_table(
            "identities",
            records=ids,
            columns=["workspace_id", "id_type", "id_value", "profile_id", "first_seen_us"],
        )
        await c.copy_records_to_table(
            "memberships",
            records=[(ws, audience, p, T0) for p in pids],
            columns=["workspace_id", "audience_id", "profile_id", "entered_at_us"],
        )
        await c.execute("ANALYZE")
    finally:
        await c.close()


async def audience(dsn: str, ws: str, key: str) -> int:
    c = await asyncpg.connect(dsn)
    try:
        return int(
            await c.fetchval(
                "INSERT INTO audiences (workspace_id, key, name, current_version, backfill,"
                " account_level, created_at_us, updated_at_us)"
                " VALUES ($1, $2, $2, 1, true, false, $3, $3) RETURNING audience_id",
                ws,
                key,
                T0,
            )
        )
    finally:
        await c.close()


async def copy_seconds(dsn: str, audience_id: int) -> float:
    async def discard(data: bytes) -> None:
        return None

    c = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await c.copy_from_query(
            COPY_QUERY.format(audience=audience_id), output=discard, format="csv"
        )
        return time.perf_counter() - started
    finally:
        await c.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each export")
    args = parser.parse_args()
    os.environ["SYNC_SECRET_KEY"] = Fernet.generate_key().decode()
    os.environ["SYNC_SCHEDULER_INTERVAL_SECONDS"] = "3600"
    url = await backends.create_database()
    dsn = backends.asyncpg_dsn(url)
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    resources = await Resources.open(
        Settings(database_url=url, redis_url=backends.test_redis_url()), "bench"
    )
    try:
        keys = await make_workspace(resources, "bench")
        ws = keys.workspace_id
        exported = await audience(dsn, ws, "exported")
        started = time.perf_counter()
        await load(dsn, ws, args.members, 1, exported)
        print(f"loaded {args.members} members in {time.perf_counter() - started:.1f}s")
        async with in_process(resources, ["sync"]) as at, channel(at["sync"]) as ch:
            stub = sync_pb2_grpc.SyncServiceStub(ch)
            meta = bearer(keys.admin)
            # Alternate COPY TO and each format, `--repeat` times: the machine's load
            # drifts, and the ratio of medians taken side by side is what we report.
            copies: list[float] = []
            took: dict[str, list[float]] = {name: [] for name in FORMATS}
            sizes: dict[str, int] = {}
            for _ in range(args.repeat):
                for name, fields in FORMATS.items():
                    copies.append(await copy_seconds(dsn, exported))
                    started = time.perf_counter()
                    size = 0
                    async for chunk in stub.ExportAudience(
                        sync_pb2.ExportAudienceRequest(audience_key="exported", **fields),
                        metadata=meta,
                    ):
                        size += len(chunk.csv)
                    took[name].append(time.perf_counter() - started)
                    sizes[name] = size
            copy = statistics.median(copies)
            print()
            print(
                f"| export of {args.members:,} members | MB | median s | max s | ratio to COPY TO |"
            )
            print("|---|---|---|---|---|")
            print(f"| Postgres COPY TO (baseline) | | {copy:.2f} | {max(copies):.2f} | 1.0x |")
            for name, times in took.items():
                median = statistics.median(times)
                print(
                    f"| {name} | {sizes[name] / 1e6:.0f} | {median:.2f} | {max(times):.2f} | "
                    f"{median / copy:.1f}x |"
                )
            print()

            delivered = await audience(dsn, ws, "delivered")
            async with webhook("bench-secret") as receiver:
                destination = await stub.CreateDestination(
                    sync_pb2.CreateDestinationRequest(
                        destination=sync_pb2.Destination(
                            name="bench",
                            kind=sync_pb2.DESTINATION_KIND_WEBHOOK,
                            base_url=receiver.url,
                            secret="bench-secret",
                        )
                    ),
                    metadata=meta,
                )
                sync = await stub.CreateSync(
                    sync_pb2.CreateSyncRequest(
                        sync=sync_pb2.Sync(
                            destination_id=destination.id,
                            source=sync_pb2.SYNC_SOURCE_AUDIENCE,
                            source_key="delivered",
                            id_type="user_id",
                            cadence=sync_pb2.SYNC_CADENCE_ONE_TIME,
                        )
                    ),
                    metadata=meta,
                )
                await stub.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=meta)
                c = await asyncpg.connect(dsn)
                try:
                    await c.execute(
                        "INSERT INTO membership_changes (workspace_id, seq, audience_id,"
                        " profile_id, kind, at_us, version)"
                        " SELECT $1, s, $2, s, 'entered', $3, 1 FROM generate_series(1, $4) s",
                        ws,
                        delivered,
                        T0,
                        args.changes,
                    )
                finally:
                    await c.close()
                started = time.perf_counter()
                result = await stub.RunSync(sync_pb2.RunSyncRequest(id=sync.id), metadata=meta)
                took = time.perf_counter() - started
                print(
                    f"delivery: {result.added} changes in {result.batches} batches, "
                    f"{took:.2f}s, {result.added / took:,.0f} changes/s"
                )
    finally:
        await resources.close()
        await backends.drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
