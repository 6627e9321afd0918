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
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import duckdb
import orjson
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.segmentation import sql
from services.segmentation.hot import HotState
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared import phases
from services.shared.clock import FixedClock
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.redis import create_redis
from tests.helpers import backends

WS = "ws_bench"
REDIS_URL = "redis://127.0.0.1:6379/11"  # flushed by the bench: not db 0, not the tests' 13
NOW = 1_735_689_600_000_000
DAY = 86_400_000_000
# Above this many events the "one at a time" row is left out (it is ~10x the rollup).
ONE_AT_A_TIME_MAX = 1_000_000
# (Recompute case, events) -> the phase times (services/shared/phases.py) of each run.
PHASES: dict[tuple[str, int], list[dict[str, float]]] = {}
# --only: substrings of the questions to time (the bare pass always runs: the ratio base).
ONLY: list[str] = []


def wanted(question: str) -> bool:
    return not ONLY or any(part.lower() in question.lower() for part in ONLY)


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


# Histories generated inside Postgres (INSERT ... SELECT over generate_series): 10M
# events load in minutes instead of the ~1 h a Python generator + COPY would take. A
# session is a profile (20% Pareto-skewed towards a few heavy users), a start within 180
# days (recent days denser) and a view -> add -> checkout -> order chain that each step
# continues with probability 0.55, steps 10 s - 2 h apart; ~2 events per session.
_LOAD = [
    "SELECT setseed(0.7)",
    # The events indexes are built after the rows are in (as the migration defines
    # them): maintaining a random-order btree row by row is what made 10M slow.
    "SET maintenance_work_mem = '512MB'",
    "DROP INDEX ix_events_profile_time",
    "DROP INDEX ix_events_name_time",
    """INSERT INTO profiles (profile_id, workspace_id, canonical_id, created_at_us)
       SELECT p, '{ws}', p, {now} - 400 * {day} FROM generate_series(1, {profiles}) p""",
    """INSERT INTO profile_traits (profile_id, key, workspace_id, value, timestamp_us, seq)
       SELECT p, 'plan', '{ws}',
              to_jsonb((ARRAY['free', 'free', 'pro', 'team'])[1 + floor(random() * 4)::int]),
              {now} - 300 * {day}, p
       FROM generate_series(1, {profiles}) p""",
    """INSERT INTO events (seq, workspace_id, message_id, type, name, profile_id,
                           timestamp_us, received_at_us, properties)
       SELECT n, '{ws}', 'm' || n, 'track', name, pid, t, t, props FROM (
         SELECT row_number() OVER () AS n, name, pid, t, props FROM (
           SELECT (ARRAY['Product Viewed', 'Product Added', 'Checkout Started',
                         'Order Completed'])[step] AS name, pid,
                  t0 + (step - 1) * 7200000000 + (10 + floor(random() * 7190))::bigint
                    * 1000000 AS t,
                  jsonb_build_object('sku', 'sku_' || (1 + floor(random() * 500))::int,
                                     'price', (5 + floor(random() * 396))::int) AS props
           FROM (
             SELECT CASE WHEN random() < 0.2
                      THEN least({profiles}, floor(1 / (1 - random()) ^ (1 / 1.2))::bigint)
                      ELSE 1 + floor(random() * {profiles})::bigint END AS pid,
                    {now} - floor(random() ^ 1.5 * 180 * {day})::bigint AS t0,
                    CASE WHEN r < 0.45 THEN 1 WHEN r < 0.6975 THEN 2
                         WHEN r < 0.833625 THEN 3 ELSE 4 END AS steps
             FROM (SELECT random() AS r FROM generate_series(1, {sessions})) g
           ) s, generate_series(1, s.steps) step
         ) e
       ) numbered WHERE n <= {events}""",
    "SELECT setval('events_seq_seq', {events})",
    "CREATE INDEX ix_events_profile_time ON events (workspace_id, profile_id, timestamp_us)",
    "CREATE INDEX ix_events_name_time ON events (workspace_id, type, name, timestamp_us)",
]


async def load(url: str, n_events: int) -> None:
    """Generate ~10 events per profile into a migrated database, then ANALYZE."""
    n_profiles = max(1, n_events // 10)
    params = {
        "ws": WS,
        "now": NOW,
        "day": DAY,
        "profiles": n_profiles,
        "events": n_events,
        # 2.02 events per session on average; 10% spare, cut at exactly n_events.
        "sessions": int(n_events / 2.02 * 1.1) + 10,
    }
    conn = await asyncpg.connect(backends.asyncpg_dsn(url))
    try:
        for statement in _LOAD:
            await conn.execute(statement.format(**params))
        await conn.execute("ANALYZE")
        await conn.execute("CREATE TABLE bench_loaded (events bigint)")
        await conn.execute(f"INSERT INTO bench_loaded VALUES ({n_events})")
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


async def migrate_kept(url: str) -> None:
    """Bring a kept database to the current migrations (and the statistics they add)."""
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as c:
            await c.execute(text("ANALYZE profiles"))
    finally:
        await engine.dispose()


async def loaded_database(n_events: int, reuse: bool) -> tuple[str, bool]:
    """(url, keep): a fresh migrated database loaded with `n_events`; with `reuse`, the
    database ``segbench_<n>`` is kept between runs and loaded only the first time."""
    if not reuse:
        url = await backends.create_database()
    else:
        name = f"segbench_{n_events}"
        url = backends.with_database(backends.base_postgres_url(), name)
        admin = await asyncpg.connect(backends.asyncpg_dsn(backends.base_postgres_url()))
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists:
                conn = await asyncpg.connect(backends.asyncpg_dsn(url))
                try:
                    done = await conn.fetchval("SELECT to_regclass('bench_loaded') IS NOT NULL")
                finally:
                    await conn.close()
                if done:
                    print(f"# reusing {name}", flush=True)
                    await migrate_kept(url)
                    return url, True
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    started = time.perf_counter()
    await load(url, n_events)
    print(f"# {n_events:,} events loaded in {time.perf_counter() - started:.1f}s", flush=True)
    return url, reuse


async def bench(n_events: int, runs: int, reuse: bool) -> list[tuple[str, int, float, float, int]]:
    url, keep = await loaded_database(n_events, reuse)
    engine = create_engine(url)
    try:
        rows = []
        sizes: dict[str, int] = {}

        async def baseline() -> None:
            async with engine.connect() as c:
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
            if not name.startswith("baseline") and not wanted(name):
                continue
            times = await timed(fn, runs)
            key = "baseline" if name.startswith("baseline") else name
            rows.append((name, n_events, statistics.median(times), p99(times), sizes[key]))
        rows += await workspace_rows(url, engine, n_events, runs)
        return rows
    finally:
        await engine.dispose()
        if not keep:
            await backends.drop_database(url)


async def export_parquet(url: str, folder: Path) -> dict[str, str]:
    """The rows the questions read, from Postgres to Parquet (not timed): COPY to CSV,
    then DuckDB writes the Parquet file (10M rows never pass through Python objects)."""
    queries = {
        "events": "SELECT profile_id, type, name, timestamp_us, properties::text AS properties"
        " FROM events",
        "profiles": "SELECT profile_id, canonical_id, deleted_at_us FROM profiles",
        "traits": "SELECT profile_id, key, value::text AS value, timestamp_us, seq"
        " FROM profile_traits",
    }
    types = {
        "events": "{'profile_id': 'BIGINT', 'type': 'VARCHAR', 'name': 'VARCHAR',"
        " 'timestamp_us': 'BIGINT', 'properties': 'VARCHAR'}",
        "profiles": "{'profile_id': 'BIGINT', 'canonical_id': 'BIGINT', 'deleted_at_us': 'BIGINT'}",
        "traits": "{'profile_id': 'BIGINT', 'key': 'VARCHAR', 'value': 'VARCHAR',"
        " 'timestamp_us': 'BIGINT', 'seq': 'BIGINT'}",
    }
    conn = await asyncpg.connect(backends.asyncpg_dsn(url))
    db = duckdb.connect()
    out = {}
    try:
        for name, q in queries.items():
            csv = folder / f"{name}.csv"
            await conn.copy_from_query(q, output=str(csv), format="csv", header=True)
            path = folder / f"{name}.parquet"
            db.execute(
                f"COPY (SELECT * FROM read_csv('{csv}', header = true, columns = {types[name]}))"
                f" TO '{path}' (FORMAT parquet)"
            )
            csv.unlink()
            out[name] = str(path)
    finally:
        db.close()
        await conn.close()
    return out


async def workspace_rows(
    url: str, engine, n_events: int, runs: int
) -> list[tuple[str, int, float, float, int]]:  # type: ignore[no-untyped-def]
    """10 audiences of one workspace: one at a time (the path before the rollup), the
    rollup, the whole Recompute through the domain facade (evaluate + diff + write to
    Postgres and the hot state), and DuckDB over Parquet. The recompute alternates its
    instant between now and a week earlier so every run has differences to write (the
    result column counts entered + exited); its first run enters everyone and is
    reported as its own row (first fill); then the steady state, recomputed at the
    instant of the last run, with nothing to change."""
    import tempfile

    defs = list(WORKSPACE.values())
    sizes: dict[str, int] = {}
    async with engine.begin() as c:  # a reused database keeps the last run's audiences
        await c.execute(
            text(
                "TRUNCATE audiences, audience_versions, audience_status, memberships,"
                " membership_changes, change_sequences"
            )
        )
    redis = create_redis(REDIS_URL)
    await redis.flushdb(asynchronous=True)  # the bench's own db (REDIS_URL), never db 0
    clock = FixedClock(NOW)
    seg_store = SegmentationStore(engine)
    seg = Segmentation(seg_store, HotState(redis), clock)
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
        with phases.recording() as times:
            result = await seg.recompute(WS, audience_key="", as_of_us=next(instants))
        PHASES.setdefault(("~half churn", n_events), []).append(times)
        sizes["recompute"] = result.entered + result.exited

    async def settled() -> None:
        with phases.recording() as times:
            result = await seg.recompute(WS, audience_key="", as_of_us=NOW)
        PHASES.setdefault(("no changes", n_events), []).append(times)
        sizes["settled"] = result.entered + result.exited

    rows = []
    # Batch evaluation refreshes planner statistics at most every 10 minutes; done
    # here once so that the first timed Recompute does not pay for it.
    await seg_store.fresh_statistics()
    questions = [
        ("10 audiences, one at a time", one_at_a_time, "one"),
        ("10 audiences, rollup", rollup, "rollup"),
        ("10 aud. Recompute, ~half churn", recompute, "recompute"),
        ("10 aud. Recompute, no changes", settled, "settled"),
    ]
    if n_events > ONE_AT_A_TIME_MAX:
        questions = questions[1:]  # ~10x the rollup: minutes per run at 10M
    for name, fn, key in questions:
        if not wanted(name):
            continue
        if key == "recompute":
            # The first run enters every member (a first fill, the size of a backfill);
            # its own row, so the churn row's median and p99 are churn runs only.
            fill = await timed(fn, 1)
            rows.append(("10 aud. Recompute, first fill", n_events, fill[0], fill[0], sizes[key]))
            if runs < 2:
                continue
            runs_left = runs - 1 + (runs - 1) % 2  # even: the last churn run ends at `now`
            times = await timed(fn, runs_left)
        else:
            times = await timed(fn, runs)
        rows.append((name, n_events, statistics.median(times), p99(times), sizes[key]))
    await redis.flushdb(asynchronous=True)
    await redis.aclose()
    if not wanted("DuckDB/Parquet: 10 audiences"):
        return rows

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


def print_phases() -> None:
    """Median seconds per phase of the Recompute rows (the first churn run, which
    enters everyone, is the p99 column there and left out here when there are more)."""
    names = sorted({k for runs in PHASES.values() for t in runs for k in t})
    print(f"\n{'Recompute phase, median s':32} " + " ".join(f"{k[:11]:>11}" for k in names))
    for (case, n), runs in PHASES.items():
        if case == "~half churn" and len(runs) > 1:
            runs = runs[1:]
        cells = [statistics.median(t.get(k, 0.0) for t in runs) for k in names]
        print(f"{case + f' {n:,}':32} " + " ".join(f"{v:>11.3f}" for v in cells), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the loaded database segbench_<events> for the next run (drop it by hand)",
    )
    parser.add_argument(
        "--load-only", action="store_true", help="with --reuse: load the databases, time nothing"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        help="time only the questions whose name contains one of these (e.g. Recompute)",
    )
    args = parser.parse_args()
    ONLY.extend(args.only)
    if args.load_only:
        for n in args.events:
            await loaded_database(n, reuse=True)
        return
    print(
        f"{'question':32} {'events':>10} {'median s':>9} {'p99 s':>8} {'x base':>7} {'result':>8}"
    )
    for n in args.events:
        rows = await bench(n, args.runs, args.reuse)
        base = rows[0][2]
        for name, events, med, tail, size in rows:
            print(
                f"{name:32} {events:>10,} {med:>9.3f} {tail:>8.3f} {med / base:>7.1f} {size:>8,}",
                flush=True,
            )
    print_phases()


if __name__ == "__main__":
    asyncio.run(main())
