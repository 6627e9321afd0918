"""Realtime worker scale-out: events/s of 1 and 2 realtime worker processes, each held
to the same CPU share (a cgroup quota, as bench/profile_load.py's --cap), over the same
two event stream shards, on the same Postgres and Redis.

    TEST_REDIS_DB=12 .venv/bin/python bench/realtime_scale.py [--events 6000] [--cap 0.3]
                                                               [--rounds 2]

bench/realtime_worker.py's workload (50 realtime audiences, 10 realtime computed
traits; 10 events of each new profile). Per configuration and round: fresh profiles
and a consumer group of its own created at the shards' ends; the workers start
(`python -m services.segmentation.realtime`, one owning both shards, or two owning one
each, as the prod overlay assigns them) and drain a warm-up; then they are paused
(SIGSTOP) while ingest writes the measured backlog over both shards, resumed
(SIGCONT), and timed until every entry of the backlog is read and acknowledged. So
neither start-up nor ingest is inside the figure; Postgres and Redis are not capped.
Rounds alternate the configurations; ratios are taken per round.

Needs root for the caps (cgroup). Creates and drops its own database; flushes the
Redis database TEST_REDIS_DB (default 14).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.profile_load import cap_cpu, cpu_seconds  # noqa: E402
from bench.realtime_worker import define, events_for  # noqa: E402
from services.ingest.ingestor import Ingestor  # noqa: E402
from services.ingest.publisher import RedisPublisher  # noqa: E402
from services.ingest.store import SqlEventStore  # noqa: E402
from services.shared import streams  # noqa: E402
from services.shared.clock import SystemClock  # noqa: E402
from services.shared.config import Settings  # noqa: E402
from services.shared.db import migrate  # noqa: E402
from services.shared.db.engine import create_engine  # noqa: E402
from services.shared.server import Resources  # noqa: E402
from tests.helpers import backends  # noqa: E402
from tests.helpers.grpc_client import wait_serving  # noqa: E402
from tests.helpers.realtime import start_worker  # noqa: E402

SHARDS = 2
PER_PROFILE = 10


@dataclass(frozen=True)
class Drain:
    """One measurement: events/s, and CPU seconds per 1,000 events of the worker
    processes and of the Postgres backends serving the bench's database."""

    rate: float
    worker_cpu_ms: float
    postgres_cpu_ms: float


async def backend_pids(resources: Resources) -> list[int]:
    """The Postgres backends connected to this database (the workers' pools)."""
    async with resources.engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        return [row[0] for row in rows]


def alive_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of `pids` still running."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds([pid])
        except FileNotFoundError:
            continue
    return out


async def unread(redis: redis_asyncio.Redis, group: str) -> int:
    """How many shards `group` has not finished: an entry not yet delivered (its last
    delivered id behind the stream's last) or delivered and not acknowledged."""
    behind = 0
    for stream in streams.event_streams(SHARDS):
        last = (await redis.xinfo_stream(stream))["last-generated-id"]
        for info in await redis.xinfo_groups(stream):
            if info["name"].decode() == group:
                behind += info["last-delivered-id"] != last or int(info["pending"]) > 0
    return behind


async def drained(redis: redis_asyncio.Redis, group: str, within: float) -> float:
    """Poll until `group` has read and acknowledged everything; the time it took."""
    began = time.perf_counter()
    while await unread(redis, group):
        if time.perf_counter() - began > within:
            raise TimeoutError(f"group {group} not drained in {within:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - began


async def measure(
    resources: Resources,
    settings: Settings,
    ws: str,
    workers: int,
    cap: float,
    events: int,
    tag: str,
) -> Drain:
    """`workers` capped processes over the two shards draining `events`."""
    clock = SystemClock()
    ingestor = Ingestor(
        SqlEventStore(resources.engine, SHARDS),
        RedisPublisher(resources.redis, shards=SHARDS),
        clock,
    )
    group = f"rt-{tag}"
    for stream in streams.event_streams(SHARDS):
        await streams.ensure_group(resources.redis, stream, group, start="$")
    shard_sets = (
        [",".join(streams.event_streams(SHARDS))]
        if workers == 1
        else list(streams.event_streams(SHARDS))
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, shard_set in enumerate(shard_sets):
            port = backends.free_port()
            process = start_worker(
                {
                    **os.environ,
                    "DATABASE_URL": settings.database_url,
                    "REDIS_URL": settings.redis_url,
                    "OTEL_TRACES_EXPORTER": "none",
                    "GRPC_PORT": str(port),
                    "REALTIME_GROUP": group,
                    "REALTIME_STREAMS": shard_set,
                    "REALTIME_CONSUMER": f"{tag}-{i}",
                    "REALTIME_BLOCK_MS": "50",
                }
            )
            processes.append(process)
            await wait_serving(f"127.0.0.1:{port}", within=60)
            cap_cpu(process.pid, cap)
        # Warm-up: connections, definitions, prepared statements, the handover.
        await ingestor.ingest(ws, events_for(40, PER_PROFILE, clock.now_us(), f"{tag}w"))
        await drained(resources.redis, group, 300)
        for process in processes:
            process.send_signal(signal.SIGSTOP)
        raws = events_for(events // PER_PROFILE, PER_PROFILE, clock.now_us(), tag)
        for i in range(0, len(raws), 2000):
            await ingestor.ingest(ws, raws[i : i + 2000])
        pids = [p.pid for p in processes]
        worker_before = cpu_seconds(pids)
        postgres_before = alive_cpu(await backend_pids(resources))
        for process in processes:
            process.send_signal(signal.SIGCONT)
        seconds = await drained(resources.redis, group, 1800)
        worker_cpu = cpu_seconds(pids) - worker_before
        postgres_after = alive_cpu(await backend_pids(resources))
        postgres_cpu = sum(
            cpu - postgres_before.get(pid, 0.0) for pid, cpu in postgres_after.items()
        )
        per_thousand = 1_000_000 / len(raws)
        return Drain(len(raws) / seconds, worker_cpu * per_thousand, postgres_cpu * per_thousand)
    finally:
        for process in processes:
            process.send_signal(signal.SIGCONT)
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6_000, help="backlog per measurement")
    parser.add_argument("--cap", type=float, default=0.3, help="CPUs per worker process")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["OTEL_TRACES_EXPORTER"] = "none"
    os.environ["INGEST_SHARDS"] = str(SHARDS)
    redis_url = backends.test_redis_url()
    url = await backends.create_database()
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.flushdb(asynchronous=True)  # the bench's own db (TEST_REDIS_DB), never db 0
    await client.aclose()
    settings = Settings(database_url=url, redis_url=redis_url, api_key_cache_seconds=0)
    resources = await Resources.open(settings, "bench", clock=SystemClock())
    drains: dict[int, list[Drain]] = {1: [], 2: []}
    try:
        ws = await define(resources, SystemClock())
        for round_ in range(args.rounds):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for workers in order:
                drain = await measure(
                    resources, settings, ws, workers, args.cap, args.events, f"r{round_}k{workers}"
                )
                drains[workers].append(drain)
                print(f"  round {round_}: {workers} worker(s) {drain}", flush=True)
    finally:
        await resources.close()
        await backends.drop_database(url)
    ratios = [two.rate / one.rate for one, two in zip(drains[1], drains[2], strict=True)]
    print(
        f"\nRealtime workers, each capped at {args.cap:g} CPU, {SHARDS} stream shards, "
        f"{args.events} events per measurement, {args.rounds} rounds"
    )
    print(
        "| workers | events/s (median) | min | max | vs 1 capped (median per round)"
        " | worker CPU ms / 1k events | Postgres CPU ms / 1k events |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for workers, values in drains.items():
        rates = [d.rate for d in values]
        ratio = 1.0 if workers == 1 else statistics.median(ratios)
        print(
            f"| {workers} x {args.cap:g} CPU | {statistics.median(rates):,.0f} | "
            f"{min(rates):,.0f} | {max(rates):,.0f} | {ratio:.2f}x | "
            f"{statistics.median(d.worker_cpu_ms for d in values):,.0f} | "
            f"{statistics.median(d.postgres_cpu_ms for d in values):,.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
