"""Batch evaluation time of a 3-condition audience (event count in a window + trait +
not-performed) and a 3-step funnel on Postgres, for growing event counts; and a
workspace of 10 audiences recomputed together (one rollup pass, then diff and write
through the domain facade), against DuckDB asking the same 10 questions of the same rows
exported to Parquet.

    .venv/bin/python bench/segmentation_batch.py --events 100000 1000000 --runs 3

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
import duckdb
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.segmentation import sql
from services.segmentation.hot import HotState
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared.clock import FixedClock
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.redis import create_redis
from tests.helpers import backends

WS = "ws_bench"
REDIS_URL = "redis://127.0.0.1:6379/11"  # flushed by the bench: not db 0, not the tests' 13
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

# Ten audiences of one workspace, in a subset of the language that DUCK below restates
# by hand: event counts (windows, a price filter), the plan trait, not/any, a funnel.


def _ev(name: str, op: str, value: int, days: int, min_price: int | None = None) -> dict:
    body: dict = {"name": name, "count": {"op": op, "value": value}}
    body["window"] = {"within_days": days}
    if min_price is not None:
        body["where"] = [{"property": "price", "op": "gt", "value": min_price}]
    return {"event": body}


def _plan(*plans: str) -> dict:
    return {"trait": {"name": "plan", "op": "in", "value": list(plans)}}


WORKSPACE: dict[str, dict] = {
    "viewers_30d": THREE_CONDITIONS["all"][0],
    "pro_browsers": THREE_CONDITIONS,
    "buyers_90d": _ev("Order Completed", "gte", 1, 90),
    "big_spenders": _ev("Order Completed", "gte", 1, 60, min_price=300),
    "cart_abandoners": {
        "all": [_ev("Product Added", "gte", 1, 7), _ev("Order Completed", "eq", 0, 7)]
    },
    "lapsed": {"all": [_ev("Order Completed", "gte", 1, 180), _ev("Product Viewed", "eq", 0, 30)]},
    "free_active": {"all": [_plan("free"), _ev("Product Viewed", "gte", 5, 60)]},
    "engaged_any": {
        "any": [_ev("Checkout Started", "gte", 2, 30), _ev("Product Added", "gte", 3, 30)]
    },
    "team_no_checkout": {"all": [_plan("team"), {"not": _ev("Checkout Started", "gte", 1, 90)}]},
    "funnel_day": FUNNEL,
}

_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def duck_sql(audiences: dict[str, dict], parquet: dict[str, str]) -> str:
    """The same questions for DuckDB over the Parquet export: one aggregate pass with a
    column per event condition, the latest plan per profile, funnels by window functions;
    one row per profile in any audience with a flag per audience (as the rollup)."""
    cols: dict[str, str] = {}
    funnels: list[str] = []

    def node(n: dict) -> str:
        if "all" in n:
            return "(" + " AND ".join(node(c) for c in n["all"]) + ")"
        if "any" in n:
            return "(" + " OR ".join(node(c) for c in n["any"]) + ")"
        if "not" in n:
            return f"(NOT {node(n['not'])})"
        if "trait" in n:
            vals = ", ".join("'" + orjson.dumps(v).decode() + "'" for v in n["trait"]["value"])
            return f"coalesce(t.plan IN ({vals}), false)"
        if "funnel" in n:
            f = n["funnel"]
            names = [s["name"] for s in f["steps"]]
            lo = NOW - f["window"]["within_days"] * DAY
            w = (
                "OVER (PARTITION BY pid ORDER BY t DESC"
                " RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
            )
            inlist = ", ".join(f"'{x}'" for x in names)
            sub = (
                f"SELECT pid, t, s0, s1, s2 AS _s2, t AS g2 FROM (SELECT profile_id AS pid,"
                f" timestamp_us AS t, name = '{names[0]}' AND timestamp_us > {lo} AS s0,"
                f" name = '{names[1]}' AS s1, name = '{names[2]}' AS s2"
                f" FROM ev WHERE timestamp_us <= {NOW} AND name IN ({inlist}))"
            )
            sub = f"SELECT pid, t, s0, s1, min(CASE WHEN _s2 THEN g2 END) {w} AS g1 FROM ({sub})"
            sub = f"SELECT pid, t, s0, min(CASE WHEN s1 THEN g1 END) {w} AS g0 FROM ({sub})"
            within = f["within_seconds"] * 1_000_000
            funnels.append(f"SELECT DISTINCT pid FROM ({sub}) WHERE s0 AND g0 <= t + {within}")
            return f"u.pid IN (SELECT pid FROM f{len(funnels) - 1})"
        e = n["event"]
        lo = NOW - e["window"]["within_days"] * DAY
        cond = f"name = '{e['name']}' AND timestamp_us > {lo}"
        for flt in e.get("where", []):
            cond += f" AND TRY_CAST(json_extract(properties, '$.price') AS DOUBLE) > {flt['value']}"
        col = cols.setdefault(cond, f"c{len(cols)}")
        return f"coalesce(e.{col}, 0) {_OPS[e['count']['op']]} {e['count']['value']}"

    flags = [f"{node(d)} AS a{i}" for i, d in enumerate(audiences.values())]
    sums = ", ".join(f"sum(CASE WHEN {c} THEN 1 ELSE 0 END) AS {k}" for c, k in cols.items())
    ctes = [
        f"ev AS (SELECT * FROM read_parquet('{parquet['events']}'))",
        f"u AS (SELECT profile_id AS pid FROM read_parquet('{parquet['profiles']}')"
        " WHERE canonical_id = profile_id AND deleted_at_us IS NULL)",
        f"t AS (SELECT profile_id AS pid, arg_max(value, timestamp_us) AS plan"
        f" FROM read_parquet('{parquet['traits']}') WHERE key = 'plan' GROUP BY profile_id)",
        f"e AS (SELECT profile_id AS pid, {sums} FROM ev WHERE timestamp_us <= {NOW}"
        " GROUP BY profile_id)",
        *[f"f{i} AS ({q})" for i, q in enumerate(funnels)],
    ]
    any_flag = " OR ".join(f"a{i}" for i in range(len(audiences)))
    return (
        f"WITH {', '.join(ctes)}, r AS (SELECT u.pid, {', '.join(flags)} FROM u"
        " LEFT JOIN e ON e.pid = u.pid LEFT JOIN t ON t.pid = u.pid)"
        f" SELECT * FROM r WHERE {any_flag}"
    )


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
        rows += await workspace_rows(url, engine, n_events, runs)
        return rows
    finally:
        await engine.dispose()
        await backends.drop_database(url)


async def export_parquet(url: str, folder: Path) -> dict[str, str]:
    """The rows the questions read, from Postgres to Parquet (not timed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    queries = {
        "events": "SELECT profile_id, type, name, timestamp_us, properties::text AS properties"
        " FROM events",
        "profiles": "SELECT profile_id, canonical_id, deleted_at_us FROM profiles",
        "traits": "SELECT profile_id, key, value::text AS value, timestamp_us, seq"
        " FROM profile_traits",
    }
    conn = await asyncpg.connect(backends.asyncpg_dsn(url))
    out = {}
    try:
        for name, q in queries.items():
            records = await conn.fetch(q)
            cols = list(records[0].keys())
            table = pa.table({c: [r[c] for r in records] for c in cols})
            path = folder / f"{name}.parquet"
            pq.write_table(table, path)
            out[name] = str(path)
    finally:
        await conn.close()
    return out


async def workspace_rows(
    url: str, engine, n_events: int, runs: int
) -> list[tuple[str, int, float, float, int]]:  # type: ignore[no-untyped-def]
    """10 audiences of one workspace: one at a time (the path before the rollup), the
    rollup, the whole Recompute through the domain facade (evaluate + diff + write to
    Postgres and the hot state), and DuckDB over Parquet. The recompute alternates its
    instant between now and a week earlier so every run has differences to write (the
    result column counts entered + exited; the first run enters everyone); then the
    steady state, recomputed at the instant of the last run, with nothing to change."""
    import tempfile

    defs = list(WORKSPACE.values())
    sizes: dict[str, int] = {}
    redis = create_redis(REDIS_URL)
    await redis.flushdb()  # the bench's own db (REDIS_URL), never db 0
    clock = FixedClock(NOW)
    seg = Segmentation(SegmentationStore(engine), HotState(redis), clock)
    for key, d in WORKSPACE.items():
        await seg.create_audience(
            WS,
            key=key,
            name=key,
            description="",
            definition=orjson.dumps(d),
            account_level=False,
            skip_backfill=True,
        )

    async def one_at_a_time() -> None:
        async with engine.connect() as c:
            total = 0
            for d in defs:
                total += len(await sql.evaluate_audience(c, d, workspace_id=WS, now_us=NOW))
        sizes["one"] = total

    async def rollup() -> None:
        async with engine.connect() as c:
            got = await sql.evaluate_audiences(c, defs, workspace_id=WS, now_us=NOW)
        sizes["rollup"] = sum(len(m) for m in got)

    instants = iter([NOW, NOW - 7 * DAY] * (runs + 1))

    async def recompute() -> None:
        result = await seg.recompute(WS, audience_key="", as_of_us=next(instants))
        sizes["recompute"] = result.entered + result.exited

    async def settled() -> None:
        result = await seg.recompute(WS, audience_key="", as_of_us=NOW)
        sizes["settled"] = result.entered + result.exited

    rows = []
    for name, fn, key in (
        ("10 audiences, one at a time", one_at_a_time, "one"),
        ("10 audiences, rollup", rollup, "rollup"),
        ("10 aud. Recompute, ~half churn", recompute, "recompute"),
        ("10 aud. Recompute, no changes", settled, "settled"),
    ):
        times = await timed(fn, runs)
        rows.append((name, n_events, statistics.median(times), p99(times), sizes[key]))
    await redis.flushdb()
    await redis.aclose()

    with tempfile.TemporaryDirectory() as folder:
        files = await export_parquet(url, Path(folder))
        query = duck_sql(WORKSPACE, files)
        db = duckdb.connect()
        db.execute("SET threads = 2")

        async def duck() -> None:
            found = db.execute(query).fetchall()
            sizes["duck"] = sum(sum(1 for v in r[1:] if v) for r in found)

        times = await timed(duck, runs)
        rows.append(
            (
                "DuckDB/Parquet: 10 audiences",
                n_events,
                statistics.median(times),
                p99(times),
                sizes["duck"],
            )
        )
        db.close()
    return rows


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
