"""Batch evaluation time of a 3-condition audience (event count in a window + trait +
not-performed) and a 3-step funnel on Postgres, for growing event counts.

    .venv/bin/python bench/segmentation_batch.py --events 100000 1000000 --runs 5

A generator writes realistic histories (COPY) into a fresh database migrated like
production (partitioned events): ~10 events per profile, skewed activity (a few heavy
users), a browse -> cart -> checkout -> order funnel with drop-off, identify traits.
Baseline in the same run: one bare pass over the same events (``count(*)`` grouped by
profile), the floor any single-pass evaluation pays. Prints median and p99 per question.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.segmentation import sql
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from tests.helpers import backends

WS = "ws_bench"
NOW = 1_735_689_600_000_000
DAY = 86_400_000_000
THREE_CONDITIONS = {
    "all": [
        {
            "event": {
                "name": "Product Viewed",
                "count": {"op": "gte", "value": 3},
                "window": {"within_days": 30},
            }
        },
        {"trait": {"name": "plan", "op": "in", "value": ["pro", "team"]}},
        {
            "event": {
                "name": "Order Completed",
                "count": {"op": "eq", "value": 0},
                "window": {"within_days": 14},
            }
        },
    ]
}
FUNNEL = {
    "funnel": {
        "steps": [
            {"name": "Product Added"},
            {"name": "Checkout Started"},
            {"name": "Order Completed"},
        ],
        "within_seconds": 86_400,
        "window": {"within_days": 30},
    }
}


def generate(n_events: int, seed: int = 7) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(profiles, events, traits) rows: ~10 events per profile, Pareto-skewed."""
    rnd = random.Random(seed)
    n_profiles = max(1, n_events // 10)
    profiles = [(p, WS, p, NOW - 400 * DAY) for p in range(1, n_profiles + 1)]
    traits = [
        (
            p,
            "plan",
            WS,
            orjson.dumps(rnd.choice(["free", "free", "pro", "team"])).decode(),
            NOW - 300 * DAY,
            p,
        )
        for p in range(1, n_profiles + 1)
    ]
    events: list[tuple] = []
    seq = 0
    while len(events) < n_events:
        p = (
            min(n_profiles, int(rnd.paretovariate(1.2)))
            if rnd.random() < 0.2
            else rnd.randint(1, n_profiles)
        )
        t = NOW - int(rnd.random() ** 1.5 * 180 * DAY)
        chain = ["Product Viewed"]
        for name in ("Product Added", "Checkout Started", "Order Completed"):
            if rnd.random() < 0.45:
                break
            chain.append(name)
        for name in chain:
            seq += 1
            t += rnd.randint(10, 7_200) * 1_000_000
            props = orjson.dumps(
                {"sku": f"sku_{rnd.randint(1, 500)}", "price": rnd.randint(5, 400)}
            ).decode()
            events.append((seq, WS, f"m{seq}", "track", name, p, t, t, props))
    return profiles, events[:n_events], traits


async def load(url: str, n_events: int) -> None:
    profiles, events, traits = generate(n_events)
    conn = await asyncpg.connect(backends.asyncpg_dsn(url))
    try:
        await conn.copy_records_to_table(
            "profiles",
            records=profiles,
            columns=["profile_id", "workspace_id", "canonical_id", "created_at_us"],
        )
        await conn.copy_records_to_table(
            "profile_traits",
            records=traits,
            columns=["profile_id", "key", "workspace_id", "value", "timestamp_us", "seq"],
        )
        await conn.copy_records_to_table(
            "events",
            records=events,
            columns=[
                "seq",
                "workspace_id",
                "message_id",
                "type",
                "name",
                "profile_id",
                "timestamp_us",
                "received_at_us",
                "properties",
            ],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


async def bench(n_events: int, runs: int) -> list[tuple[str, int, float, float, int]]:
    url = await backends.create_database()
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        started = time.perf_counter()
        await load(url, n_events)
        print(f"# {n_events:,} events loaded in {time.perf_counter() - started:.1f}s", flush=True)
        rows = []
        sizes: dict[str, int] = {}

        async def baseline() -> None:
            async with engine.connect() as c:
                from sqlalchemy import text

                r = await c.execute(
                    text(
                        "SELECT count(*) FROM (SELECT profile_id, count(*) FROM events"
                        " GROUP BY profile_id) s"
                    )
                )
                sizes["baseline"] = int(r.scalar_one())

        def audience(name: str, definition: dict):  # type: ignore[no-untyped-def]
            async def run() -> None:
                async with engine.connect() as c:
                    sizes[name] = len(
                        await sql.evaluate_audience(c, definition, workspace_id=WS, now_us=NOW)
                    )

            return run

        for name, fn in (
            ("baseline: one pass over events", baseline),
            ("3-condition audience", audience("3-condition audience", THREE_CONDITIONS)),
            ("3-step funnel", audience("3-step funnel", FUNNEL)),
        ):
            times = await timed(fn, runs)
            key = "baseline" if name.startswith("baseline") else name
            rows.append((name, n_events, statistics.median(times), p99(times), sizes[key]))
        return rows
    finally:
        await engine.dispose()
        await backends.drop_database(url)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'question':32} {'events':>10} {'median s':>9} {'p99 s':>8} {'x base':>7} {'result':>8}"
    )
    for n in args.events:
        rows = await bench(n, args.runs)
        base = rows[0][2]
        for name, events, med, tail, size in rows:
            print(
                f"{name:32} {events:>10,} {med:>9.3f} {tail:>8.3f} {med / base:>7.1f} {size:>8,}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
