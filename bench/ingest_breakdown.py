"""Where an ingest group's time goes: the Ingestor in-process (no gRPC), fed the
bench's batches by 4 concurrent callers (each translating its protobuf events and
building the response as the servicer's Batch does), with every awaited Postgres
statement and the Redis update timed per group, and the process's CPU per event.

    .venv/bin/python bench/ingest_breakdown.py [--workload returning|new] [--batches 80]
                                               [--shards 1] [--profile]

With `--shards N` the store and publisher write N stream shards (docs/ingest.md,
"Shards"); `--profile` prints the functions with the most CPU (cProfile).

Awaited times include whatever other coroutines (the callers' validation) ran
meanwhile, as in the real process. Needs Postgres and Redis on loopback; creates and
drops its own database; uses Redis db 14 (flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import ingest_batch as bench  # noqa: E402

from services.ingest.app import tune_gc  # noqa: E402
from services.ingest.ingestor import Ingestor  # noqa: E402
from services.ingest.publisher import RedisPublisher  # noqa: E402
from services.ingest.server import _batch_response, to_raw  # noqa: E402
from services.ingest.store import SqlEventStore  # noqa: E402
from services.shared.auth import KeyStore  # noqa: E402
from services.shared.clock import SystemClock  # noqa: E402
from services.shared.db import migrate  # noqa: E402
from services.shared.db.engine import create_engine  # noqa: E402
from tests.helpers.backends import create_database, drop_database  # noqa: E402

SPENT: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str | None = None) -> None:
    """Wrap an async method so its awaited time is added up per statement/label."""
    original = getattr(owner, name)

    async def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        first = args[0] if args and isinstance(args[0], str) else ""
        key = label or f"{name}: {first[:60]}"
        began = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - began
            CALLS[key] += 1

    setattr(owner, name, wrapper)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=bench.WORKLOADS, default="returning")
    parser.add_argument("--batches", type=int, default=80)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    tune_gc()  # as `python -m services.ingest` does
    for method in ("fetch", "fetchrow", "execute", "copy_records_to_table"):
        timed(asyncpg.Connection, method)
    timed(RedisPublisher, "apply_shards", "Redis update (hot state + stream, one round trip)")

    url = await create_database()
    engine = create_engine(url)
    await migrate.upgrade(engine)
    workspace_id, _, _ = await KeyStore(engine).create_workspace("breakdown")
    redis = redis_asyncio.Redis.from_url(bench.REDIS_URL)
    await redis.flushdb(asynchronous=True)
    ingestor = Ingestor(
        SqlEventStore(engine, args.shards),
        RedisPublisher(redis, shards=args.shards),
        SystemClock(),
    )
    now_us = SystemClock().now_us()
    build = bench.returning_event if args.workload == "returning" else bench.new_users_event
    counter = [0]
    batches = [bench.make_batch(now_us, counter, build) for _ in range(args.batches)]
    seed_counter = [0]
    seeds = [
        bench.make_batch(now_us - 3_600_000_000, seed_counter, bench.seed_event)
        for _ in range(bench.USERS // bench.BATCH if args.workload == "returning" else 0)
    ]

    async def run(waiting: list, callers: int = 4) -> None:  # type: ignore[type-arg]
        async def caller() -> None:
            while waiting:
                batch = waiting.pop(0)
                # As the servicer's Batch does, response included (not serialized).
                raws = [to_raw(e, batch.context) for e in batch.events]
                _batch_response(await ingestor.ingest(workspace_id, raws))

        await asyncio.gather(*(caller() for _ in range(callers)))

    await run(seeds)
    await run(batches[:4])  # warm-up
    SPENT.clear()
    CALLS.clear()
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    began, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    await run(batches[4:])
    if profiler:
        profiler.disable()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    events = (args.batches - 4) * bench.BATCH
    groups = CALLS["Redis update (hot state + stream, one round trip)"]
    print(
        f"{args.workload}: {events / elapsed:,.0f} events/s in-process, "
        f"{groups} groups of {events / groups:,.0f} events, "
        f"{elapsed / groups * 1e3:.0f} ms per group, process CPU {cpu / elapsed:.0%}, "
        f"{cpu / events * 1e6:.1f} us of CPU per event"
    )
    print(f"{'ms per group':>13}{'calls':>7}  step")
    for key, spent in sorted(SPENT.items(), key=lambda item: -item[1]):
        print(f"{spent / groups * 1e3:>13.1f}{CALLS[key] / groups:>7.1f}  {key}")
    if profiler:
        lines = int(os.environ.get("PROFILE_LINES", "25"))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)
    await engine.dispose()
    await redis.flushdb(asynchronous=True)
    await redis.aclose()
    await drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
