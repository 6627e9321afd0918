"""What each index costs an ingest group: the same timed batches of the returning-users
mix (bench/ingest_batch.py) written by the real Ingestor (in-process, as
bench/ingest_breakdown.py runs it) into copies of one seeded database, first with every
index, then with one index or constraint of `events`, `event_ids`, `identities`,
`profile_traits`, `profiles` or `merges` dropped per copy.

    .venv/bin/python bench/ingest_index_cost.py [--batches 60] [--rounds 2] [--redis-db 14]
                                                [--only ix_events_name_time,...]

Per variant it prints the Postgres time awaited per event (every asyncpg statement of
the groups, COPYs included) and its difference from the database with every index
(measured first and again last, so the two "all" rows show the noise). A variant
whose statements fail without the index (an ON CONFLICT target) is reported as such:
that index is required by the statement, whatever it costs. Then, for the database with
every index, each statement per group (the round trips) and the Redis update.

Needs Postgres and Redis on loopback. Creates and drops its own databases (a seeded
template and one copy per variant, CREATE DATABASE ... TEMPLATE); flushes the given
Redis db (never use 0 on a shared server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import ingest_batch as bench  # noqa: E402
import ingest_breakdown as breakdown  # noqa: E402

from services.ingest.app import tune_gc  # noqa: E402
from services.ingest.ingestor import Ingestor  # noqa: E402
from services.ingest.publisher import RedisPublisher  # noqa: E402
from services.ingest.server import to_raw  # noqa: E402
from services.ingest.store import SqlEventStore  # noqa: E402
from services.shared.auth import KeyStore  # noqa: E402
from services.shared.clock import SystemClock  # noqa: E402
from services.shared.db import migrate  # noqa: E402
from services.shared.db.engine import create_engine  # noqa: E402
from tests.helpers.backends import asyncpg_dsn, create_database, drop_database  # noqa: E402

TABLES = ("events", "event_ids", "identities", "profile_traits", "profiles", "merges")
REDIS_LABEL = "Redis update (hot state + stream, one round trip)"
STATEMENTS = ("fetch", "execute", "copy_records_to_table")


@dataclass
class Variant:
    name: str
    table: str
    drop: str  # SQL that removes it ("" for the database with every index)
    pg_us: float = float("inf")  # the lowest of the rounds
    wall_us: float = 0.0
    error: str = ""
    spent: dict[str, float] | None = None
    calls: dict[str, int] | None = None


async def indexes(url: str) -> list[Variant]:
    """Every index of TABLES (the partitioned parent's, not its partitions' copies),
    with the statement that drops it (its constraint, when one owns it)."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT t.relname AS tbl, i.relname AS idx, c.conname"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_class t ON t.oid = x.indrelid"
            " LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = t.oid"
            " WHERE t.relname = ANY($1::text[]) AND t.relnamespace = 'public'::regnamespace"
            " ORDER BY array_position($1::text[], t.relname::text), i.relname",
            list(TABLES),
        )
    finally:
        await connection.close()
    return [
        Variant(
            row["idx"],
            row["tbl"],
            f'ALTER TABLE "{row["tbl"]}" DROP CONSTRAINT "{row["conname"]}" CASCADE'
            if row["conname"]
            else f'DROP INDEX "{row["idx"]}"',
        )
        for row in rows
    ]


async def seed_template(redis: Any) -> tuple[str, str]:
    """A migrated database with a workspace and the returning mix's 20,000 known users."""
    url = await create_database()
    engine = create_engine(url)
    await migrate.upgrade(engine)
    workspace_id, _, _ = await KeyStore(engine).create_workspace("index-cost")
    ingestor = Ingestor(SqlEventStore(engine), RedisPublisher(redis), SystemClock())
    counter = [0]
    past_us = SystemClock().now_us() - 3_600_000_000
    for _ in range(bench.USERS // bench.BATCH):
        batch = bench.make_batch(past_us, counter, bench.seed_event)
        await ingestor.ingest(workspace_id, [to_raw(e, batch.context) for e in batch.events])
    async with engine.connect() as connection:
        for table in TABLES:
            await connection.exec_driver_sql(f"ANALYZE {table}")
    await engine.dispose()
    return url, workspace_id


async def run_variant(
    template: str,
    variant: Variant,
    workspace_id: str,
    batches: list[Any],
    redis: Any,
    limit: float = 60.0,
) -> None:
    """Clone the template, drop the variant's index, ingest `batches` (the first 4 as
    warm-up) with 4 callers, and record Postgres and wall time per timed event."""
    url = await create_database(template.rsplit("/", 1)[1])
    try:
        # A DDL statement on every copy, a no-op one on the database with every index:
        # otherwise only the variants pay (and warm) a first connection's catalog reads
        # and cache invalidations, which measured as 5-10 us per event in their favour.
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await connection.execute(variant.drop or "COMMENT ON TABLE merges IS NULL")
        finally:
            await connection.close()
        await redis.flushdb(asynchronous=True)
        engine = create_engine(url)
        ingestor = Ingestor(SqlEventStore(engine), RedisPublisher(redis), SystemClock())

        async def run(waiting: list[Any]) -> None:
            async def caller() -> None:
                while waiting:
                    batch = waiting.pop(0)
                    raws = [to_raw(e, batch.context) for e in batch.events]
                    await ingestor.ingest(workspace_id, raws)

            await asyncio.gather(*(caller() for _ in range(4)))

        try:
            await run(list(batches[:4]))
            breakdown.SPENT.clear()
            breakdown.CALLS.clear()
            began = time.perf_counter()
            await asyncio.wait_for(run(list(batches[4:])), limit)
            elapsed = time.perf_counter() - began
        except TimeoutError:
            # Without it a per-row probe becomes a scan of a growing table: minutes.
            variant.error = f"over {limit:.0f} s (the others take seconds): probes scan"
        except Exception as error:  # a variant the statements cannot run without
            variant.error = str(error).splitlines()[0][:70]
        else:
            events = (len(batches) - 4) * bench.BATCH
            spent = sum(v for k, v in breakdown.SPENT.items() if k != REDIS_LABEL)
            if spent / events * 1e6 < variant.pg_us:
                variant.pg_us = spent / events * 1e6
                variant.wall_us = elapsed / events * 1e6
                variant.spent = dict(breakdown.SPENT)
                variant.calls = dict(breakdown.CALLS)
        finally:
            await engine.dispose()
    finally:
        await drop_database(url)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=60, help="of 500 events, 4 warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant; lowest kept")
    parser.add_argument("--redis-db", type=int, default=int(bench.REDIS_URL.rsplit("/", 1)[1]))
    parser.add_argument("--only", default="", help="comma-separated index names")
    args = parser.parse_args()
    if args.redis_db == 0:
        parser.error("--redis-db 0 is flushed by this bench: give another db")
    tune_gc()
    for method in STATEMENTS:
        breakdown.timed(asyncpg.Connection, method)
    breakdown.timed(RedisPublisher, "apply_shards", REDIS_LABEL)
    redis = redis_asyncio.Redis.from_url(f"redis://127.0.0.1:6379/{args.redis_db}")
    await redis.flushdb(asynchronous=True)
    template, workspace_id = await seed_template(redis)
    try:
        now_us = SystemClock().now_us()
        counter = [0]
        batches = [
            bench.make_batch(now_us, counter, bench.returning_event) for _ in range(args.batches)
        ]
        wanted = {name for name in args.only.split(",") if name}
        variants = [v for v in await indexes(template) if not wanted or v.name in wanted]
        # Interleaved rounds, the database with every index measured at the start and
        # the end of each: load from elsewhere on the machine hits all alike.
        full = Variant("(every index)", "", "")
        again = Variant("(every index, again)", "", "")
        for round_ in range(args.rounds):
            await run_variant(template, full, workspace_id, batches, redis)
            for variant in variants:
                if not variant.error:
                    limit = max(20.0, 10 * full.wall_us * len(batches) * bench.BATCH / 1e6)
                    await run_variant(template, variant, workspace_id, batches, redis, limit)
                print(f"  round {round_ + 1}: {variant.name}", file=sys.stderr, flush=True)
            await run_variant(template, again, workspace_id, batches, redis)
    finally:
        await drop_database(template)
        await redis.flushdb(asynchronous=True)
        await redis.aclose()

    events = (args.batches - 4) * bench.BATCH
    base = min(full.pg_us, again.pg_us)
    print(
        f"{events:,} timed events (returning mix, batches of {bench.BATCH}, 4 callers), "
        f"lowest of {args.rounds} rounds; Postgres us awaited per event; an index's cost "
        f"is what dropping it saves against every index ({base:.1f} us)"
    )
    print(f"| {'dropped':<34}| {'table':<15}| {'PG us/event':>11} | {'cost':>7} | {'share':>6} |")
    print(f"|{'-' * 35}|{'-' * 16}|{'-' * 13}|{'-' * 9}|{'-' * 8}|")
    for v in [full, *variants, again]:
        if v.error:
            print(f"| {v.name:<34}| {v.table:<15}| fails: {v.error}")
            continue
        cost = base - v.pg_us if v.drop else 0.0
        share = f"{cost / base:>6.1%}" if v.drop else ""
        print(f"| {v.name:<34}| {v.table:<15}| {v.pg_us:>11.1f} | {cost:>+7.1f} | {share:>6} |")
    best = full if full.pg_us <= again.pg_us else again
    spent, calls = best.spent or {}, best.calls or {}
    groups = calls[REDIS_LABEL]
    print(
        f"\nEvery index: {groups} groups of {events / groups:,.0f} events; "
        f"{best.wall_us:.1f} us wall per event"
    )
    print(f"| {'us/event':>8} | {'per group':>9} | statement")
    print(f"|{'-' * 10}|{'-' * 11}|{'-' * 40}")
    for key, value in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"| {value / events * 1e6:>8.1f} | {calls[key] / groups:>9.1f} | {key}")
    statements_per_group = sum(c for k, c in calls.items() if k != REDIS_LABEL) / groups
    print(f"Postgres statements (round trips) per group: {statements_per_group:.1f}, plus 1 Redis")


if __name__ == "__main__":
    asyncio.run(main())
