"""The realtime worker under load: sustained events/s through one worker with 50
realtime audiences and 10 realtime computed traits defined, against the worker's bare
XREADGROUP + XACK loop over the same entries in the same run; and the latency from
each event's due time to its `changes` record at a fixed offered rate.

    TEST_REDIS_DB=1 .venv/bin/python bench/realtime_worker.py --events 20000 --runs 3 \
        --rate 1000 --seconds 10

Throughput: ingest's own ingestor writes `--events` track and identify events of
`--events / 10` new profiles (Postgres + `stream:events`), then, both reading with the
worker's own step (`--batch` per read, growing to `--max-batch` under a backlog:
worker.read_backlog), (a) a bare consumer
group reads and acknowledges every entry in batches (the baseline), (b) the worker's
own `process` consumes the same entries in its consumer group, writing memberships,
computed values, hot state and `stream:changes`. Repeated `--runs` times on new
profiles; prints events/s (median over runs), per-batch median and p99, and the ratio.

Latency: a worker process (`python -m services.segmentation.realtime`, wall clock)
consumes while the bench offers `--rate` events/s through the ingestor, each of a new
profile, timestamped at its due time; every event makes its profile enter an audience,
so the first `changes` record of each profile closes that event's latency (due time ->
the record read from the stream). Prints p50/p99 and the baseline: the same offered
events' due time -> their ingest acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as redis_asyncio
import redis.exceptions as redis_exceptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.ingest.ingestor import Ingestor
from services.ingest.model import RawEvent
from services.ingest.publisher import RedisPublisher
from services.ingest.store import SqlEventStore
from services.segmentation.hot import HotState
from services.segmentation.realtime.app import worker as make_worker
from services.segmentation.realtime.settings import RealtimeSettings
from services.segmentation.realtime.worker import read_backlog
from services.segmentation.service import Segmentation
from services.segmentation.store import SegmentationStore
from services.shared import streams
from services.shared.clock import Clock, FixedClock, SystemClock
from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.helpers import backends
from tests.helpers.realtime import start_worker

NOW = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z (throughput part)
DAY = 86_400_000_000
NAMES = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Signed Up"]
_ids = itertools.count()


def _ev(name: str, op: str = "gte", value: int = 1, days: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "count": {"op": op, "value": value}}
    if days is not None:
        body["window"] = {"within_days": days}
    return {"event": body}


def computed_traits() -> dict[str, dict[str, Any]]:
    """Ten computed traits over the event names and a price property."""
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(NAMES):
        out[f"count_{i}"] = {"type": "event_count", "event": name, "window": {"within_days": 30}}
    out["revenue"] = {"type": "sum", "event": "Order Completed", "property": "price"}
    out["max_price"] = {"type": "max", "event": "Product Viewed", "property": "price"}
    out["last_sku"] = {"type": "last", "event": "Product Viewed", "property": "sku"}
    out["skus"] = {"type": "unique_count", "event": "Product Viewed", "property": "sku"}
    out["first_seen"] = {"type": "first", "event": "Signed Up", "property": "source"}
    return out


def audiences() -> dict[str, dict[str, Any]]:
    """Fifty audiences: counts in windows, not-performed, traits, funnels, computed
    comparisons and audience references (the shapes realtime clients define)."""
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(NAMES):
        for days in (1, 7, 30):
            out[f"did_{i}_{days}d"] = _ev(name, days=days)
        out[f"many_{i}"] = _ev(name, "gte", 3, 30)
        out[f"none_{i}"] = _ev(name, "eq", 0, 14)
        out[f"pro_{i}"] = {
            "all": [_ev(name, days=7), {"trait": {"name": "plan", "op": "eq", "value": "pro"}}]
        }
        out[f"lapsing_{i}"] = {"event": {"name": name, "window": {"between_days": [7, 14]}}}
        out[f"pricey_{i}"] = {
            "event": {
                "name": name,
                "where": [{"property": "price", "op": "gt", "value": 150}],
                "window": {"within_days": 30},
            }
        }
    for i in range(5):
        out[f"count_gt_{i}"] = {"computed": {"key": f"count_{i}", "op": "gte", "value": 2}}
    out["spenders"] = {"computed": {"key": "revenue", "op": "gt", "value": 100}}
    out["funnel_day"] = {
        "funnel": {
            "steps": [{"name": "Product Viewed"}, {"name": "Product Added"}],
            "within_seconds": 86_400,
            "window": {"within_days": 30},
        }
    }
    out["funnel_open"] = {
        "funnel": {
            "steps": [{"name": "Product Added"}, {"name": "Order Completed"}],
            "within_seconds": 3_600,
            "completed": False,
        }
    }
    out["viewers_not_buyers"] = {
        "all": [{"audience": {"key": "did_0_7d"}}, {"not": {"audience": {"key": "did_3_30d"}}}]
    }
    out["any_recent"] = {"any": [{"audience": {"key": f"did_{i}_1d"}} for i in range(5)]}
    assert len(out) == 50, len(out)
    return out


def events_for(profiles: int, per_profile: int, now_us: int, tag: str) -> list[RawEvent]:
    """`per_profile` events of each new profile (one identify, the rest tracks)."""
    out: list[RawEvent] = []
    for p in range(profiles):
        user = f"{tag}-u{p}"
        out.append(
            RawEvent(
                type="identify",
                message_id=f"m{next(_ids)}",
                user_id=user,
                timestamp_us=now_us - (p % 50) * 3_600_000_000,
                traits={"plan": "pro" if p % 3 == 0 else "free"},
            )
        )
        for k in range(per_profile - 1):
            name = NAMES[(p + k) % len(NAMES)]
            out.append(
                RawEvent(
                    type="track",
                    message_id=f"m{next(_ids)}",
                    user_id=user,
                    event=name,
                    timestamp_us=now_us - ((p * 7 + k * 13) % 40) * DAY // 2,
                    properties={"price": (p * 31 + k) % 200, "sku": f"s{(p + k) % 17}"},
                )
            )
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def define(resources: Resources, clock: Clock) -> str:
    ws, _, _ = await resources.keys.create_workspace("realtime bench")
    seg = Segmentation(SegmentationStore(resources.engine), HotState(resources.redis), clock)
    for key, definition in computed_traits().items():
        await seg.create_computed_trait(
            ws,
            key=key,
            name=key,
            definition=orjson.dumps(definition),
            skip_backfill=True,
            realtime=True,
        )
    for key, definition in audiences().items():
        await seg.create_audience(
            ws,
            key=key,
            name=key,
            description="",
            definition=orjson.dumps(definition),
            account_level=False,
            skip_backfill=True,
            realtime=True,
        )
    return ws


async def throughput(
    settings: Settings, events: int, runs: int, batch: int, max_batch: int
) -> None:
    clock = FixedClock(NOW)
    resources = await Resources.open(settings, "bench", clock=clock)
    try:
        ws = await define(resources, clock)
        ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
        realtime = RealtimeSettings(
            consumer="bench", block_ms=None, batch_size=batch, max_batch=max_batch
        )
        worker = make_worker(resources, realtime)
        await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, realtime.group)
        await streams.ensure_group(resources.redis, streams.EVENTS_STREAM, "baseline")
        rows: list[tuple[str, float, float, float]] = []
        base_rates: list[float] = []
        rates: list[float] = []
        base_batches: list[float] = []
        batches: list[float] = []
        for run in range(runs):
            raws = events_for(events // 10, 10, clock.now_us(), f"r{run}")
            for i in range(0, len(raws), 2000):
                await ingestor.ingest(ws, raws[i : i + 2000])
            n = 0
            started = time.perf_counter()
            while True:
                t = time.perf_counter()
                read = await read_backlog(
                    resources.redis, realtime.streams, "baseline", "b", batch, max_batch, None
                )
                if not read:
                    break
                await streams.ack(
                    resources.redis, streams.EVENTS_STREAM, "baseline", [e.id for _, e in read]
                )
                base_batches.append(time.perf_counter() - t)
                n += len(read)
            base_rates.append(n / (time.perf_counter() - started))
            n = 0
            started = time.perf_counter()
            while True:
                t = time.perf_counter()
                read = await read_backlog(
                    resources.redis,
                    realtime.streams,
                    realtime.group,
                    "bench",
                    batch,
                    max_batch,
                    None,
                )
                if not read:
                    break
                await worker.process(read)
                batches.append(time.perf_counter() - t)
                n += len(read)
            rates.append(n / (time.perf_counter() - started))
            print(
                f"  run {run}: {n} entries, worker {rates[-1]:,.0f}/s, "
                f"bare loop {base_rates[-1]:,.0f}/s",
                flush=True,
            )
            clock.advance(60)
        changes = await resources.redis.xlen(streams.CHANGES_STREAM)
        print(f"  {changes} change records published")
        rows.append(
            (
                "bare XREADGROUP+XACK (baseline)",
                statistics.median(base_rates),
                statistics.median(base_batches) * 1000,
                pct(base_batches, 0.99) * 1000,
            )
        )
        rows.append(
            (
                "worker: 50 audiences + 10 computed",
                statistics.median(rates),
                statistics.median(batches) * 1000,
                pct(batches, 0.99) * 1000,
            )
        )
        print(
            f"\nThroughput ({events} events per run, {runs} runs, "
            f"batch {batch} growing to {max_batch} under a backlog)"
        )
        print("| loop | events/s (median) | batch ms median | batch ms p99 | ratio to baseline |")
        print("|---|---|---|---|---|")
        for name, rate, med, p99 in rows:
            print(f"| {name} | {rate:,.0f} | {med:.1f} | {p99:.1f} | {rate / rows[0][1]:.3f} |")
    finally:
        await resources.close()


async def latency(settings: Settings, rate: int, seconds: float, batch: int) -> None:
    clock = SystemClock()
    resources = await Resources.open(settings, "bench", clock=clock)
    worker: subprocess.Popen[bytes] | None = None
    try:
        ws = await define(resources, clock)
        await resources.redis.delete(streams.CHANGES_STREAM)
        env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "OTEL_TRACES_EXPORTER": "none",
            "GRPC_PORT": str(backends.free_port()),
            "REALTIME_CONSUMER": "latency",
            "REALTIME_BATCH_SIZE": str(batch),
            "REALTIME_BLOCK_MS": "50",
        }
        worker = start_worker(env)
        ingestor = Ingestor(SqlEventStore(resources.engine), RedisPublisher(resources.redis), clock)
        # Warm up: the worker's group exists and it has read its definitions once.
        await ingestor.ingest(ws, events_for(1, 2, clock.now_us(), "warm"))
        deadline = time.monotonic() + 30
        while not await resources.redis.xlen(streams.CHANGES_STREAM):
            assert time.monotonic() < deadline, "the worker published nothing"
            await asyncio.sleep(0.05)
        last_change = (await resources.redis.xrevrange(streams.CHANGES_STREAM, count=1))[0][0]

        total = int(rate * seconds)
        due: dict[str, float] = {}  # user -> due time (wall seconds)
        acked: list[float] = []
        first_change: dict[int, float] = {}
        done = asyncio.Event()

        async def offer() -> None:
            start = time.time()
            sent = 0
            pending: set[asyncio.Task[None]] = set()
            while sent < total:
                now = time.time()
                upto = min(total, int((now - start) * rate) + 1)
                group = []
                for i in range(sent, upto):
                    user = f"lat-u{i}"
                    at = start + i / rate
                    due[user] = at
                    group.append(
                        RawEvent(
                            type="track",
                            message_id=f"lat{i}",
                            user_id=user,
                            event="Product Viewed",
                            timestamp_us=int(at * 1_000_000),
                            properties={"price": i % 200, "sku": f"s{i % 17}"},
                        )
                    )
                sent = upto

                async def send(group: list[RawEvent]) -> None:
                    await ingestor.ingest(ws, group)
                    t = time.time()
                    acked.extend(t - due[e.user_id] for e in group)

                if group:
                    task = asyncio.create_task(send(group))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(max(0.0, start + sent / rate - time.time()))
            await asyncio.gather(*pending)

        async def watch() -> None:
            cursor = last_change
            while not done.is_set() or len(first_change) < total:
                try:
                    reply = await resources.redis.xread({streams.CHANGES_STREAM: cursor}, 1000, 200)
                except redis_exceptions.TimeoutError:
                    continue  # Redis busy past the socket timeout (shared machine): read on
                t = time.time()
                if not reply:
                    if done.is_set() and time.time() > finish + 30:
                        return
                    continue
                for entry_id, fields in reply[0][1]:
                    cursor = entry_id
                    pid = int(fields[b"profile_id"])
                    first_change.setdefault(pid, t)

        finish = float("inf")
        watcher = asyncio.create_task(watch())
        await offer()
        finish = time.time()
        done.set()
        await watcher
        # profile id -> user, from the events stream (ingest names the canonical profile).
        user_of: dict[int, str] = {}
        for _, fields in await resources.redis.xrange(streams.EVENTS_STREAM):
            if fields.get(b"kind", b"event") == b"event":
                event = orjson.loads(fields[b"event"])
                user_of[int(fields[b"profile_id"])] = event["user_id"]
        lat = [
            t - due[user_of[pid]]
            for pid, t in first_change.items()
            if pid in user_of and user_of[pid] in due
        ]
        print(f"\nLatency at {rate} events/s offered for {seconds:.0f} s ({total} events)")
        print(f"  changes seen for {len(lat)} of {total} offered events")
        print("| measure | p50 ms | p99 ms | ratio p99 to baseline |")
        print("|---|---|---|---|")
        base99 = pct(acked, 0.99)
        print(
            f"| due -> ingest ack (baseline) | {pct(acked, 0.5) * 1000:.1f} | "
            f"{base99 * 1000:.1f} | 1.0 |"
        )
        if lat:
            print(
                f"| due -> `changes` record | {pct(lat, 0.5) * 1000:.1f} | "
                f"{pct(lat, 0.99) * 1000:.1f} | {pct(lat, 0.99) / base99:.1f} |"
            )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        await resources.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    # The worker's REALTIME_MAX_BATCH; --max-batch equal to --batch: batches never grow.
    parser.add_argument("--max-batch", type=int, default=RealtimeSettings().max_batch)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip", choices=["throughput", "latency"], default=None)
    args = parser.parse_args()
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    redis_url = backends.test_redis_url()
    for part in ("throughput", "latency"):
        if args.skip == part:
            continue
        url = await backends.create_database()
        engine = create_engine(url)
        await migrate.upgrade(engine)
        await engine.dispose()
        client = redis_asyncio.Redis.from_url(redis_url)
        await client.flushdb(asynchronous=True)  # the bench's own db (TEST_REDIS_DB), never db 0
        await client.aclose()
        settings = Settings(database_url=url, redis_url=redis_url, api_key_cache_seconds=0)
        try:
            if part == "throughput":
                await throughput(settings, args.events, args.runs, args.batch, args.max_batch)
            else:
                await latency(settings, args.rate, args.seconds, args.batch)
        finally:
            await backends.drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
