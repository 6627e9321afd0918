"""Batch evaluation time of account-level audiences on Postgres, against the same
run's user-level audience over the same inner condition (what the users' rollup costs).

    .venv/bin/python bench/accounts_batch.py --events 100000 1000000 --runs 3

Histories come from segmentation_batch's generator (~10 events per profile, skewed
activity, a funnel, a plan trait); on top, every profile joins one account with one
group call (~5 users per account, Pareto-sized, a few big ones), and a third of the
calls set the account's `tier` trait. Accounts are registered once before timing (the
registration, one INSERT .. SELECT, is timed separately: first and repeated).
Prints median and p99 per question and the ratio to the user-level baseline.
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

from bench.segmentation_batch import NOW, THREE_CONDITIONS, WS, load, p99, timed
from services.segmentation import sql, sql_accounts
from services.segmentation.account_store import AccountStore
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from tests.helpers import backends

DAY = 86_400_000_000
INNER = THREE_CONDITIONS
QUESTIONS = {
    "account any(3-condition)": {"account": {"match": "any", "condition": INNER}},
    "account all(viewed 30d) + tier": {
        "all": [
            {"trait": {"name": "tier", "op": "in", "value": ["gold", "silver"]}},
            {
                "account": {
                    "match": "all",
                    "condition": {
                        "event": {"name": "Product Viewed", "window": {"within_days": 30}}
                    },
                }
            },
        ]
    },
    "account none(order 14d)": {
        "account": {
            "match": "none",
            "condition": {"event": {"name": "Order Completed", "window": {"within_days": 14}}},
        }
    },
}


def group_calls(n_events: int, first_seq: int, seed: int = 11) -> list[tuple]:
    """One group call per profile: ~5 users per account, Pareto-sized accounts."""
    rnd = random.Random(seed)
    n_profiles = max(1, n_events // 10)
    n_accounts = max(1, n_profiles // 5)
    rows = []
    for p in range(1, n_profiles + 1):
        a = min(n_accounts, int(rnd.paretovariate(1.1))) if rnd.random() < 0.2 else None
        a = a or rnd.randint(1, n_accounts)
        seq = first_seq + p
        t = NOW - rnd.randint(1, 300) * DAY
        traits = {"tier": rnd.choice(["gold", "silver", "bronze"])} if rnd.random() < 0.33 else {}
        rows.append(
            (seq, WS, f"g{seq}", "group", p, f"acct_{a}", t, t, orjson.dumps(traits).decode())
        )
    return rows


async def bench(n_events: int, runs: int) -> list[tuple[str, int, float, float, int]]:
    url = await backends.create_database()
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        started = time.perf_counter()
        await load(url, n_events)
        conn = await asyncpg.connect(backends.asyncpg_dsn(url))
        try:
            await conn.copy_records_to_table(
                "events",
                records=group_calls(n_events, first_seq=n_events + 1),
                columns=[
                    "seq",
                    "workspace_id",
                    "message_id",
                    "type",
                    "profile_id",
                    "group_id",
                    "timestamp_us",
                    "received_at_us",
                    "traits",
                ],
            )
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        print(f"# {n_events:,} events loaded in {time.perf_counter() - started:.1f}s", flush=True)
        accounts = AccountStore(engine)
        rows = []
        for label in ("register accounts (first)", "register accounts (again)"):
            t0 = time.perf_counter()
            await accounts.register(WS)
            took = time.perf_counter() - t0
            rows.append((label, n_events, took, took, 0))
        sizes: dict[str, int] = {}

        def users() -> object:
            async def run() -> None:
                async with engine.connect() as c:
                    found = await sql.evaluate_audience(c, INNER, workspace_id=WS, now_us=NOW)
                    sizes["baseline"] = len(found)

            return run

        def account(name: str, definition: dict) -> object:
            async def run() -> None:
                async with engine.connect() as c:
                    found = await sql_accounts.evaluate_account_audience(
                        c, definition, workspace_id=WS, now_us=NOW
                    )
                    sizes[name] = len(found)

            return run

        timings = [("baseline: user 3-condition", users())]
        timings += [(name, account(name, d)) for name, d in QUESTIONS.items()]
        for name, fn in timings:
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
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'question':34} {'events':>10} {'median s':>9} {'p99 s':>8} {'x base':>7} {'result':>8}"
    )
    for n in args.events:
        rows = await bench(n, args.runs)
        base = next(r[2] for r in rows if r[0].startswith("baseline"))
        for name, events, med, tail, size in rows:
            print(
                f"{name:34} {events:>10,} {med:>9.3f} {tail:>8.3f} {med / base:>7.2f} {size:>8,}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
