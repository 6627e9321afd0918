"""Ingest scale-out: events/s and acknowledgement p50/p99 of 1, 2 and 4 ingest
processes on the same Postgres and Redis, each process held to the same CPU share (a
cgroup quota, as bench/profile_load.py's --cap), all writing `--shards` stream shards
(docs/ingest.md, "Shards"); then one uncapped process against asyncpg COPY of the same
rows into `events` (same table, same indexes) in the same round.

    .venv/bin/python bench/ingest_scale.py [--seconds 8] [--cap 0.3] [--shards 4]
                                           [--rounds 2] [--concurrency 3]

The workload is bench/ingest_batch.py's "returning users" mix (20,000 known users
created before timing; 3% new visitors), batches of 500 events over gRPC Batch, a
closed loop of `--concurrency` batches in flight per process. Each configuration
gets fresh message ids. Rounds are interleaved (1, 2, 4 capped, uncapped, COPY per
round) and the table shows medians over rounds and ratios taken per round. Also
reported: the servers' CPU per event (from /proc), the figure the capacity table in
docs/scaling.md is built from, since on a shared machine it moves less than throughput.

Needs root for the caps (cgroup), Postgres and Redis on loopback. Creates and drops its
own database; uses the Redis database TEST_REDIS_DB (default 14), flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_batch import (  # noqa: E402
    BATCH,
    USERS,
    copy_records,
    make_batch,
    pct,
    returning_event,
    run_copy,
    seed_event,
)
from bench.profile_load import cap_cpu, cpu_seconds  # noqa: E402
from services.shared.auth import KeyStore  # noqa: E402
from services.shared.clock import SystemClock  # noqa: E402
from services.shared.db import migrate  # noqa: E402
from services.shared.db.engine import create_engine  # noqa: E402
from tests.helpers.backends import asyncpg_dsn, create_database, drop_database, free_port  # noqa: E402
from tests.helpers.grpc_client import wait_serving  # noqa: E402

REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('TEST_REDIS_DB', '14')}"


def start(database_url: str, shards: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "GRPC_PORT": str(port),
        "INGEST_HTTP_PORT": "0",
        "INGEST_SHARDS": str(shards),
        "OTEL_TRACES_EXPORTER": "none",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    return process, f"127.0.0.1:{port}"


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def load(  # type: ignore[no-untyped-def]
    addresses: list[str], key: str, payloads: list[bytes], seconds: float, concurrency: int
):
    """Closed loop: `concurrency` batches in flight per process until `seconds` pass.
    Returns (events/s, latencies in seconds)."""
    from bench.ingest_batch import _batch_call

    latencies: list[float] = []
    accepted = 0
    queue = list(payloads)
    calls = [_batch_call(address, key) for address in addresses]
    stop_at = time.perf_counter() + seconds

    async def worker(call, metadata) -> None:  # type: ignore[no-untyped-def]
        nonlocal accepted
        while queue and time.perf_counter() < stop_at:
            payload = queue.pop()
            begun = time.perf_counter()
            reply = await call(payload, metadata=metadata)
            latencies.append(time.perf_counter() - begun)
            accepted += reply.accepted

    began = time.perf_counter()
    await asyncio.gather(
        *(worker(call, metadata) for _, call, metadata in calls for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - began
    for channel, _, _ in calls:
        await channel.close()
    if not queue and seconds < 30:  # (the warm-up and the seeding empty theirs)
        print("  (ran out of prepared batches: raise the estimate)", flush=True)
    return accepted / elapsed, latencies


def batches_for(now_us: int, counter: list[int], count: int):  # type: ignore[no-untyped-def]
    return [make_batch(now_us, counter, returning_event) for _ in range(count)]


async def measure(  # type: ignore[no-untyped-def]
    database_url: str,
    key: str,
    opts: argparse.Namespace,
    count: int,
    cap: float | None,
    counter: list[int],
    shards: int,
):
    """`count` processes (capped at `cap` CPUs each, or not): events/s, latencies,
    server CPU us per event, and the batches sent (for the COPY baseline)."""
    now_us = SystemClock().now_us()
    budget = 9000 * (count if cap else 4) * opts.seconds
    batches = batches_for(now_us, counter, int(budget / BATCH) + 4)
    payloads = [b.SerializeToString() for b in batches]
    started = [start(database_url, shards) for _ in range(count)]
    processes = [p for p, _ in started]
    addresses = [a for _, a in started]
    groups = []
    try:
        for address in addresses:
            await wait_serving(address)
        # Warm-up (connections, prepared statements), untimed and uncapped.
        await load(addresses, key, [payloads.pop() for _ in range(2 * count)], 30, 1)
        if cap:
            groups = [cap_cpu(p.pid, cap) for p in processes]
        pids = [p.pid for p in processes]
        before = cpu_seconds(pids)
        rate, latencies = await load(addresses, key, payloads, opts.seconds, opts.concurrency)
        spent = cpu_seconds(pids) - before
        events = rate * opts.seconds
    finally:
        stop(processes)
        for group in groups:
            group.rmdir()
    return rate, latencies, spent / max(events, 1) * 1e6, batches


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--cap", type=float, default=0.3, help="CPUs per capped process")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=3, help="batches in flight/process")
    parser.add_argument("--counts", default="1,2,4", help="capped process counts")
    parser.add_argument(
        "--one-shard",
        action="store_true",
        help="also 2 capped processes with INGEST_SHARDS=1 (the single lock)",
    )
    opts = parser.parse_args()
    counts = [int(c) for c in opts.counts.split(",")]

    database_url = await create_database()
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    workspace_id, _, _ = await KeyStore(engine).create_workspace("bench")
    _, key = await KeyStore(engine).create_key(workspace_id, "ingest", ["ingest:write"])
    await engine.dispose()
    redis = redis_asyncio.Redis.from_url(REDIS_URL)
    await redis.flushdb(asynchronous=True)
    counter = [0]
    results: dict[str, list[tuple[float, list[float], float]]] = {}
    try:
        # The known users, untimed, through one uncapped process.
        seed_counter = [0]
        now_us = SystemClock().now_us()
        seeds = [
            make_batch(now_us - 3_600_000_000, seed_counter, seed_event).SerializeToString()
            for _ in range(USERS // BATCH)
        ]
        process, address = start(database_url, opts.shards)
        try:
            await wait_serving(address)
            await load([address], key, seeds, 600, 4)
        finally:
            stop([process])
        for round_no in range(opts.rounds):
            for count in counts:
                label = f"{count} process{'es' if count > 1 else ''} x {opts.cap:g} CPU"
                rate, lat, cpu_us, _ = await measure(
                    database_url, key, opts, count, opts.cap, counter, opts.shards
                )
                results.setdefault(label, []).append((rate, lat, cpu_us))
                print(f"round {round_no + 1} {label:<24} {rate:9,.0f} events/s", flush=True)
            if opts.one_shard:
                # Before sharding: one lock for the deployment, whatever the processes.
                label = f"2 processes x {opts.cap:g} CPU, 1 shard"
                rate, lat, cpu_us, _ = await measure(
                    database_url, key, opts, 2, opts.cap, counter, 1
                )
                results.setdefault(label, []).append((rate, lat, cpu_us))
                print(f"round {round_no + 1} {label:<24} {rate:9,.0f} events/s", flush=True)
            label = "1 process, uncapped"
            rate, lat, cpu_us, batches = await measure(
                database_url, key, opts, 1, None, counter, opts.shards
            )
            results.setdefault(label, []).append((rate, lat, cpu_us))
            print(f"round {round_no + 1} {label:<24} {rate:9,.0f} events/s", flush=True)
            copy_rate, copy_lat = await run_copy(
                asyncpg_dsn(database_url), copy_records(batches), opts.seconds / 2
            )
            results.setdefault("asyncpg COPY into events", []).append((copy_rate, copy_lat, 0.0))
            print(f"round {round_no + 1} {'COPY':<24} {copy_rate:9,.0f} rows/s", flush=True)
    finally:
        await redis.flushdb(asynchronous=True)
        await redis.aclose()
        await drop_database(database_url)

    base_label = f"1 process x {opts.cap:g} CPU"
    print()
    print(
        f"ingest scale-out, {opts.shards} shards, returning-users mix, batches of {BATCH}, "
        f"{opts.concurrency} in flight per process, {opts.seconds:g} s, "
        f"medians of {opts.rounds} rounds"
    )
    print(
        "| configuration | events/s | ack p50 ms | ack p99 ms | server CPU us/event | ratio | vs |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        p50 = statistics.median(pct(r[1], 0.5) for r in runs) * 1000
        p99 = statistics.median(pct(r[1], 0.99) for r in runs) * 1000
        cpu = statistics.median(r[2] for r in runs)
        if label == "1 process, uncapped":
            to = "asyncpg COPY into events"
        elif label.startswith("asyncpg"):
            to = None
        else:
            to = base_label
        ratio = (
            statistics.median(a[0] / b[0] for a, b in zip(runs, results[to], strict=True))
            if to
            else 1.0
        )
        cpu_text = f"{cpu:.0f}" if cpu else "-"
        print(
            f"| {label} | {rate:,.0f} | {p50:.0f} | {p99:.0f} | {cpu_text} | "
            f"{ratio:.2f}x | {to or '-'} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
