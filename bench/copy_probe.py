"""Why plain asyncpg COPY of ingest's rows is far below ~300,000 rows/s: the same
pre-built rows COPY'd into table variants, from the bare storage floor up to the
real `events` table, each in 500-row transactions (one per ingest batch) and in
one 4,000-row transaction (one group commit), A/B in the same run.

    .venv/bin/python bench/copy_probe.py [--rows 40000]

Needs Postgres on loopback (the test default). Creates and drops its own database.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.ingest.store import EVENT_COLUMNS  # noqa: E402
from services.shared.db import migrate  # noqa: E402
from services.shared.db.engine import create_engine  # noqa: E402
from tests.helpers.backends import asyncpg_dsn, create_database, drop_database  # noqa: E402

_PLAIN = """
CREATE TABLE v (
    seq BIGINT NOT NULL, workspace_id VARCHAR(64) NOT NULL, message_id VARCHAR(255) NOT NULL,
    type VARCHAR(16) NOT NULL, name VARCHAR(255), profile_id BIGINT NOT NULL,
    user_id VARCHAR(255), anonymous_id VARCHAR(255), group_id VARCHAR(255),
    previous_id VARCHAR(255), timestamp_us BIGINT NOT NULL, received_at_us BIGINT NOT NULL,
    properties {json}, traits {json}, context {json}{pk}
)"""
# (label, DDL statements) from the storage floor up to the real table.
VARIANTS = (
    ("plain table, text JSON, no index", [_PLAIN.format(json="TEXT", pk="")]),
    ("plain table, jsonb, no index", [_PLAIN.format(json="JSONB", pk="")]),
    (
        "plain table, jsonb, primary key",
        [_PLAIN.format(json="JSONB", pk=", PRIMARY KEY (seq)")],
    ),
    (
        "plain, jsonb, pk + 2 indexes",
        [
            _PLAIN.format(json="JSONB", pk=", PRIMARY KEY (seq)"),
            "CREATE INDEX ON v (workspace_id, profile_id, timestamp_us)",
            "CREATE INDEX ON v (workspace_id, type, name, timestamp_us)",
        ],
    ),
    (
        "plain, json (text-checked), pk + 2 indexes",
        [
            _PLAIN.format(json="JSON", pk=", PRIMARY KEY (seq)"),
            "CREATE INDEX ON v (workspace_id, profile_id, timestamp_us)",
            "CREATE INDEX ON v (workspace_id, type, name, timestamp_us)",
        ],
    ),
    ("events (partitioned, jsonb, pk + 2 indexes)", []),
)


def rows(count: int, now_us: int) -> list[tuple]:  # type: ignore[type-arg]
    """Rows shaped like the ingest bench's events (90% track, 10% identify)."""
    built = []
    for n in range(count):
        identify = n % 10 == 0
        built.append(
            (
                n + 1,
                "ws_probe",
                uuid.uuid4().hex,
                "identify" if identify else "track",
                None if identify else ["Viewed", "Added", "Ordered"][n % 3],
                n % 20_000 + 1,
                f"user-{n * 7919 % 20_000}",
                f"anon-{n}" if identify else None,
                None,
                None,
                now_us - (n % 1000) * 1000,
                now_us,
                None
                if identify
                else orjson.dumps({"price": n % 100, "sku": f"sku-{n % 500}"}).decode(),
                orjson.dumps({"plan": "pro", "seats": n % 50}).decode() if identify else None,
                None if identify else orjson.dumps({"ip": "10.0.0.1", "locale": "en-US"}).decode(),
            )
        )
    return built


async def measure(
    connection: asyncpg.Connection,
    table: str,
    data: list[tuple],
    per_tx: int,  # type: ignore[type-arg]
) -> tuple[float, list[float]]:
    latencies = []
    began = time.perf_counter()
    for start in range(0, len(data), per_tx):
        chunk = data[start : start + per_tx]
        t0 = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table(table, records=chunk, columns=EVENT_COLUMNS)
        latencies.append(time.perf_counter() - t0)
    return len(data) / (time.perf_counter() - began), latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=40_000)
    args = parser.parse_args()
    url = await create_database()
    try:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        await engine.dispose()
        connection = await asyncpg.connect(asyncpg_dsn(url))
        data = rows(args.rows, int(time.time() * 1_000_000))
        print(f"{args.rows:,} rows per variant; rows/s, and p50/p99 ms per transaction")
        print(f"{'table':<46}{'tx rows':>8}{'rows/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for number, (label, ddl) in enumerate(VARIANTS):
            for per_tx in (500, 4000):
                table = "events"
                if ddl:
                    # A new name per run: asyncpg caches the column types per table name.
                    table = f"v{number}_{per_tx}"
                    for statement in ddl:
                        await connection.execute(statement.replace(" v ", f" {table} "))
                else:
                    await connection.execute("TRUNCATE events")
                await connection.execute("CHECKPOINT")
                rate, lat = await measure(connection, table, data, per_tx)
                ordered = sorted(lat)
                p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                print(
                    f"{label:<46}{per_tx:>8}{rate:>10,.0f}"
                    f"{statistics.median(lat) * 1e3:>9.1f}{p99 * 1e3:>9.1f}"
                )
        await connection.close()
    finally:
        await drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
