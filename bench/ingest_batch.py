"""Ingest throughput: events/s acknowledged end to end (durable in Postgres) by ONE
ingest process over gRPC Batch of 500 events, beside two baselines measured in the
same run: plain asyncpg COPY of the same rows (the storage limit) and protobuf
parse-only (the wire-format limit).

    .venv/bin/python bench/ingest_batch.py [--seconds 10] [--concurrency 4] [--workload both]
                                           [--rates 1000,5000]

With `--rates`, the same process then takes batches at each fixed offered rate
(events/s, open loop: a batch is sent every 500/rate seconds whether or not the
previous one was answered, and its latency counts from when it was due, so a stalled
server cannot hide its queueing): how long an acknowledgement takes at a given load,
not only at saturation.

Two workloads, each on a fresh database and ingest process: "returning" (20,000
known users created before timing; RETURNING_MIX below) and "new" (the original
mix, where most events are a user's first).

Needs Postgres and Redis on loopback (the test defaults). Creates and drops its own
database; uses Redis db 14 (flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import orjson
import redis.asyncio as redis_asyncio
from audiences.v1 import ingest_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.shared.auth import KeyStore  # noqa: E402
from services.shared.clock import SystemClock  # noqa: E402
from services.shared.db import migrate  # noqa: E402
from services.shared.db.engine import create_engine  # noqa: E402
from services.shared.db.tables import events as events_table  # noqa: E402
from tests.helpers.backends import asyncpg_dsn, create_database, drop_database, free_port  # noqa: E402
from tests.helpers.grpc_client import wait_serving  # noqa: E402

BATCH = 500
USERS = 20_000
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('TEST_REDIS_DB', '14')}"
WORKLOADS = ("returning", "new")
# The "returning users" mix, per 100 timed events (docs/benchmarks.md): known users
# (pre-created before timing) send 75 tracks, 12 pages and 10 identifies (trait
# changes); 3 are tracks from new anonymous visitors (a new profile each).
RETURNING_MIX = ((75, "track"), (12, "page"), (10, "identify"), (3, "visitor"))
_KINDS = [kind for share, kind in RETURNING_MIX for _ in range(share)]


def _stamp(message: ingest_pb2.Event, now_us: int, n: int) -> ingest_pb2.Event:
    message.timestamp.FromMicroseconds(now_us - (n % 1000) * 1000)
    return message


def _track(n: int, user: str = "", anonymous: str = "") -> ingest_pb2.Event:
    return ingest_pb2.Event(
        type=ingest_pb2.EVENT_TYPE_TRACK,
        message_id=uuid.uuid4().hex,
        user_id=user,
        anonymous_id=anonymous,
        event=["Viewed", "Added", "Ordered"][n % 3],
        properties=orjson.dumps({"price": n % 100, "sku": f"sku-{n % 500}"}),
        context=orjson.dumps({"ip": "10.0.0.1", "locale": "en-US"}),
    )


def new_users_event(n: int) -> ingest_pb2.Event:
    """The original workload: 90% track, 10% identify with an anonymous id, over
    20,000 user ids, so most timed events are a user's first (profile + identities)."""
    user = f"user-{n * 7919 % USERS}"
    if n % 10 == 0:
        return ingest_pb2.Event(
            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
            message_id=uuid.uuid4().hex,
            user_id=user,
            anonymous_id=f"anon-{n * 7919 % USERS}",
            traits=orjson.dumps({"plan": ["free", "pro"][n % 2], "seats": n % 50}),
        )
    return _track(n, user)


def seed_event(n: int) -> ingest_pb2.Event:
    """One known user of the returning workload, created before timing: an identify
    linking its user id, anonymous id and email, with traits."""
    return ingest_pb2.Event(
        type=ingest_pb2.EVENT_TYPE_IDENTIFY,
        message_id=uuid.uuid4().hex,
        user_id=f"known-{n}",
        anonymous_id=f"known-anon-{n}",
        traits=orjson.dumps({"email": f"known-{n}@example.com", "plan": "free", "seats": 1}),
    )


def returning_event(n: int) -> ingest_pb2.Event:
    """One timed event of the returning-users mix (RETURNING_MIX)."""
    kind = _KINDS[n % len(_KINDS)]
    user = f"known-{n * 7919 % USERS}"
    if kind == "visitor":
        return _track(n, anonymous=f"visitor-{n}")
    if kind == "identify":
        return ingest_pb2.Event(
            type=ingest_pb2.EVENT_TYPE_IDENTIFY,
            message_id=uuid.uuid4().hex,
            user_id=user,
            traits=orjson.dumps({"plan": ["free", "pro"][n % 2], "seats": n % 50}),
        )
    if kind == "page":
        return ingest_pb2.Event(
            type=ingest_pb2.EVENT_TYPE_PAGE,
            message_id=uuid.uuid4().hex,
            user_id=user,
            name=["Home", "Pricing", "Docs"][n % 3],
            properties=orjson.dumps({"path": f"/p/{n % 200}", "referrer": "search"}),
            context=orjson.dumps({"ip": "10.0.0.1", "locale": "en-US"}),
        )
    return _track(n, user)


def make_batch(now_us: int, counter: list[int], build) -> ingest_pb2.BatchRequest:  # type: ignore[no-untyped-def]
    events = []
    for _ in range(BATCH):
        n = counter[0]
        counter[0] += 1
        events.append(_stamp(build(n), now_us, n))
    return ingest_pb2.BatchRequest(events=events)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _batch_call(address: str, key: str):  # type: ignore[no-untyped-def]
    """A channel, its Batch call (taking serialized requests) and the key's metadata."""
    channel = grpc.aio.insecure_channel(address)
    call = channel.unary_unary(
        "/audiences.v1.IngestService/Batch",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.BatchResponse.FromString,
    )
    return channel, call, (("authorization", f"Bearer {key}"),)


async def run_ingest(  # type: ignore[no-untyped-def]
    address: str, key: str, payloads: list[bytes], seconds: float, concurrency: int
):
    latencies: list[float] = []
    accepted = 0
    channel, call, metadata = _batch_call(address, key)
    queue = list(payloads)
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal accepted
        while queue and time.perf_counter() < stop:
            payload = queue.pop()
            start = time.perf_counter()
            reply = await call(payload, metadata=metadata)
            latencies.append(time.perf_counter() - start)
            accepted += reply.accepted

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await channel.close()
    return accepted / elapsed, latencies


async def run_ingest_rate(  # type: ignore[no-untyped-def]
    address: str, key: str, payloads: list[bytes], seconds: float, events_per_second: float
):
    """Open loop at a fixed offered rate; latency from each batch's due time."""
    latencies: list[float] = []
    accepted = 0
    channel, call, metadata = _batch_call(address, key)
    interval = BATCH / events_per_second
    count = min(len(payloads), int(seconds / interval))

    async def one(payload: bytes, due: float) -> None:
        nonlocal accepted
        reply = await call(payload, metadata=metadata)
        latencies.append(time.perf_counter() - due)
        accepted += reply.accepted

    began = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        due = began + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(payloads[i], due)))
    await asyncio.gather(*tasks)
    # The offered span at least: the last batch is due one interval before its end.
    elapsed = max(time.perf_counter() - began, count * interval)
    await channel.close()
    return accepted / elapsed, latencies


def copy_records(batches: list[ingest_pb2.BatchRequest]) -> list[list[tuple]]:  # type: ignore[type-arg]
    """The bench's events as `events` rows, one list per batch, built before timing so
    the COPY baseline measures the storage alone."""
    seq = 10_000_000_000
    built = []
    for batch in batches:
        records = []
        for e in batch.events:
            seq += 1
            records.append(
                (
                    seq,
                    "ws_copy",
                    e.message_id + "c",
                    "track",
                    e.event or e.name or None,
                    1,
                    e.user_id or None,
                    e.anonymous_id or None,
                    None,
                    None,
                    e.timestamp.ToMicroseconds(),
                    e.timestamp.ToMicroseconds(),
                    e.properties.decode() or None,
                    e.traits.decode() or None,
                    e.context.decode() or None,
                )
            )
        built.append(records)
    return built


async def run_copy(dsn: str, batches: list[list[tuple]], seconds: float):  # type: ignore[no-untyped-def,type-arg]
    connection = await asyncpg.connect(dsn)
    latencies: list[float] = []
    rows_done = 0
    stop = time.perf_counter() + seconds
    began = time.perf_counter()
    for records in batches:
        if time.perf_counter() > stop:
            break
        start = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table(
                "events",
                records=records,
                columns=[column.name for column in events_table.columns],
            )
        latencies.append(time.perf_counter() - start)
        rows_done += len(records)
    elapsed = time.perf_counter() - began
    await connection.close()
    return rows_done / elapsed, latencies


def run_parse(payloads: list[bytes], seconds: float):  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    began = time.perf_counter()
    done = 0
    for payload in payloads:
        if time.perf_counter() > stop:
            break
        start = time.perf_counter()
        done += len(ingest_pb2.BatchRequest.FromString(payload).events)
        latencies.append(time.perf_counter() - start)
    return done / (time.perf_counter() - began), latencies


async def run_workload(  # type: ignore[no-untyped-def]
    workload: str, seconds: float, concurrency: int, rates: list[float]
):
    """One workload on a fresh database and ingest process, then its baselines."""
    database_url = await create_database()
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    workspace_id, _, _ = await KeyStore(engine).create_workspace("bench")
    _, key = await KeyStore(engine).create_key(workspace_id, "ingest", ["ingest:write"])
    await engine.dispose()
    flush = redis_asyncio.Redis.from_url(REDIS_URL)
    await flush.flushdb(asynchronous=True)

    now_us = SystemClock().now_us()
    counter = [0]
    needed = int(60_000 * seconds / BATCH) + 10
    rate_needed = [int(rate * seconds / BATCH) + 1 for rate in rates]
    build = returning_event if workload == "returning" else new_users_event
    batches = [make_batch(now_us, counter, build) for _ in range(needed)]
    payloads = [b.SerializeToString() for b in batches]
    rate_payloads = [
        [make_batch(now_us, counter, build).SerializeToString() for _ in range(n)]
        for n in rate_needed
    ]
    seed_counter = [0]
    seeds = [
        make_batch(now_us - 3_600_000_000, seed_counter, seed_event).SerializeToString()
        for _ in range(USERS // BATCH if workload == "returning" else 0)
    ]

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "GRPC_PORT": str(port),
        "INGEST_HTTP_PORT": "0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ingest",
        env=env,
        cwd=ROOT,
        stderr=asyncio.subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        await wait_serving(address)
        # Warm-up (connections, prepared statements) and the known users, untimed.
        await run_ingest(address, key, payloads[-5:], 5, 1)
        if seeds:
            await run_ingest(address, key, seeds, 600, concurrency)
        rate, lat = await run_ingest(address, key, payloads[:-5], seconds, concurrency)
        offered = [
            (
                f"ingest at {offered:,.0f} events/s offered",
                *await run_ingest_rate(address, key, batch_payloads, seconds, offered),
            )
            for offered, batch_payloads in zip(rates, rate_payloads, strict=True)
        ]
        stream_length = await flush.xlen("stream:events")
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            # Never leave a server behind: it would keep publishing into the next
            # run's Redis database.
            server.kill()
            await server.wait()
            print(f"{workload:<11}ingest process did not exit 30 s after SIGTERM; killed")
    copy_rate, copy_lat = await run_copy(
        asyncpg_dsn(database_url), copy_records(batches), seconds / 2
    )
    parse_rate, parse_lat = run_parse(payloads, seconds / 2)
    await flush.flushdb(asynchronous=True)
    await flush.aclose()
    await drop_database(database_url)
    return [
        ("ingest gRPC Batch (durable ack)", rate, lat),
        *offered,
        ("asyncpg COPY, same rows", copy_rate, copy_lat),
        ("protobuf parse only", parse_rate, parse_lat),
    ], stream_length


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workload", choices=(*WORKLOADS, "both"), default="both")
    parser.add_argument(
        "--rates",
        default="",
        help="comma-separated offered rates (events/s) run after the saturation run",
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    chosen = WORKLOADS if args.workload == "both" else (args.workload,)
    print(f"batch = {BATCH} events, concurrency = {args.concurrency}, {args.seconds:.0f} s")
    print(f"{'workload':<11}{'path':<34}{'events/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'x ingest':>10}")
    for workload in chosen:
        rows, stream_length = await run_workload(workload, args.seconds, args.concurrency, rates)
        rate = rows[0][1]
        for name, r, values in rows:
            print(
                f"{workload:<11}{name:<34}{r:>12,.0f}{statistics.median(values) * 1e3:>9.2f}"
                f"{pct(values, 0.99) * 1e3:>9.2f}{r / rate:>10.1f}"
            )
        print(f"{workload:<11}stream entries published: {stream_length}")


if __name__ == "__main__":
    asyncio.run(main())
