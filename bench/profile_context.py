"""GetProfile with a request context and 20 context audiences, against plain GetProfile.

    TEST_REDIS_DB=8 .venv/bin/python bench/profile_context.py [--profiles 50000] [--rounds 3]

Seeds N profiles (20 traits, 10 stored audiences, 2 predictions each; the same
profiles as bench/profile_load.py), publishes 20 context audiences (each combining one
or two stored audiences with 2-4 context conditions; 5 with a holdout share) the way
segmentation does, starts one profile process and measures, from a load generator in
a separate process, in rotated rounds on the same server:

- plain: GetProfile (every section, warm wire cache), the baseline;
- context: the same request with a 10-attribute RequestContext (country, city,
  device_type, os, browser, language, page_path, utm_source, utm_campaign, time_zone),
  answered with the context audiences the request qualifies for.

Latency: one open-loop run per round at a fixed offered rate (--rate, default 1,000
req/s) alternating plain and context calls, p50/p99 from the scheduled send time per
kind (both kinds meet the same load on a shared machine). Throughput: each target at
saturation (--concurrency calls in flight), in rotated order, with the server CPU per
call, which moves much less with other load than req/s does.
The table gives medians over the rounds and the ratios context/plain taken within a
round (then the median), plus the server CPU per call. Targets (issue 21): context
throughput >= 0.85x plain, p99 at 1,000 req/s within 1.2x plain. The Redis db is
flushed and the bench database dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen"), str(ROOT / "bench")]

import grpc  # noqa: E402
import profile_load as base  # noqa: E402
import redis.asyncio as redis_asyncio  # noqa: E402
from audiences.v1 import common_pb2, profile_pb2  # noqa: E402

from services.segmentation.hot import HotState  # noqa: E402

CONTEXT = common_pb2.RequestContext(
    country="DE",
    city="Berlin",
    device_type="mobile",
    os="iOS",
    browser="Safari",
    language="de-DE",
    page_path="/products/shoes",
    utm_source="newsletter",
    utm_campaign="spring",
    time_zone="Europe/Berlin",
)


def context_audiences() -> list[list[object]]:
    """20 context audiences over the seeded stored audiences (audience_00..09)."""
    conditions = [
        {"context": {"attribute": "device_type", "op": "eq", "value": "mobile"}},
        {"context": {"attribute": "country", "op": "in", "value": ["DE", "AT", "CH"]}},
        {"context": {"attribute": "utm_campaign", "op": "exists"}},
        {"context": {"attribute": "page_path", "op": "starts_with", "value": "/products"}},
        {"context": {"attribute": "local_hour", "op": "gte", "value": 6}},
        {"context": {"attribute": "browser", "op": "neq", "value": "IE"}},
        {"context": {"attribute": "os", "op": "in", "value": ["Android", "Windows"]}},
        {"context": {"attribute": "custom.plan", "op": "eq", "value": "pro"}},
    ]
    out: list[list[object]] = []
    for i in range(20):
        picked = [conditions[(i + k) % len(conditions)] for k in range(2 + i % 3)]
        stored = [{"audience": {"key": f"audience_{i % 10:02d}"}}]
        if i % 4 == 0:
            stored.append({"audience": {"key": f"audience_{(i + 3) % 10:02d}"}})
        tree = {"all": [*stored, *picked]} if i % 5 else {"any": [*stored, *picked]}
        out.append([f"ctx_{i:02d}", tree])
    return out


async def publish(redis_url: str, ws: str) -> None:
    redis = redis_asyncio.Redis.from_url(redis_url)
    defs = context_audiences()
    holdouts = {str(k): 0.1 for k, _ in defs[:5]}
    await HotState(redis).publish_audience_config(ws, {"context": defs, "holdouts": holdouts})
    await redis.aclose()


async def mixed(opts: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """One open-loop run at --rate alternating plain and context calls: both kinds meet
    the same moment-to-moment load of a shared machine, so their latencies compare."""
    picks = base.pool(opts.profiles, "warm")
    plain, context = [], []
    for p in picks:
        request = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=base.user_value(p))
        )
        plain.append(request.SerializeToString())
        request.context.CopyFrom(CONTEXT)
        context.append(request.SerializeToString())
    metadata = (("authorization", f"Bearer {opts.key}"),)
    channels = [
        grpc.aio.insecure_channel(opts.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(base.CHANNELS)
    ]
    calls = [c.unary_unary(base.METHOD, base._identity, base._identity) for c in channels]
    latencies: dict[str, list[float]] = {"plain": [], "context": []}
    errors = {"plain": 0, "context": 0}

    async def one(i: int, scheduled: float | None = None) -> None:
        kind, requests = ("context", context) if i % 2 else ("plain", plain)
        started = scheduled if scheduled is not None else time.perf_counter()
        try:
            await calls[i % len(calls)](
                requests[(i // 2) % len(requests)], metadata=metadata, timeout=10
            )
            if scheduled is not None:
                latencies[kind].append(time.perf_counter() - started)
        except grpc.aio.AioRpcError:
            errors[kind] += 1

    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        await asyncio.gather(*(one(i) for i in range(16)))
    total = int(opts.rate * opts.duration)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / opts.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for channel in channels:
        await channel.close()
    return {kind: base._summary(latencies[kind], elapsed, errors[kind], 0) for kind in latencies}


async def load(opts: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    if opts.load == "mixed":
        return await mixed(opts)
    picks = base.pool(opts.profiles, "warm")
    requests = []
    for p in picks:
        request = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=base.user_value(p))
        )
        if opts.load == "context":
            request.context.CopyFrom(CONTEXT)
        requests.append(request.SerializeToString())
    metadata = (("authorization", f"Bearer {opts.key}"),)
    channels = [
        grpc.aio.insecure_channel(opts.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(base.CHANNELS)
    ]
    calls = [c.unary_unary(base.METHOD, base._identity, base._identity) for c in channels]

    async def call_one(i: int) -> None:
        await calls[i % len(calls)](requests[i % len(requests)], metadata=metadata, timeout=10)

    result = await base._drive(call_one, opts.mode, opts.duration, opts.rate, opts.concurrency)
    for channel in channels:
        await channel.close()
    return result


def run_load(
    target: str, mode: str, address: str, key: str, server: int, opts: argparse.Namespace
) -> dict:  # type: ignore[type-arg]
    before = base.cpu_seconds([server])
    command = [
        sys.executable, __file__, "--load", target, "--mode", mode, "--address", address,
        "--key", key, "--profiles", str(opts.profiles), "--duration", str(opts.duration),
        "--rate", str(opts.rate), "--concurrency", str(opts.concurrency),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[type-arg]
    if "calls" in result:
        result["cpu_us"] = (base.cpu_seconds([server]) - before) / result["calls"] * 1e6
    return result


def orchestrate(opts: argparse.Namespace) -> None:
    if opts.redis_url.rsplit("/", 1)[1] in ("0", "13"):
        raise SystemExit("use a Redis db of its own (not 0, not 13): it is flushed")
    asyncio.run(base._flush(opts.redis_url))
    database_url, keys = asyncio.run(base.create_bench_database(opts.pg))
    ws, key = keys["workspace_id"], keys["profile_key"]
    metadata = (("authorization", f"Bearer {key}"),)
    processes: list[subprocess.Popen[bytes]] = []
    rounds: list[dict[tuple[str, str], dict]] = []  # type: ignore[type-arg]
    try:
        seconds = base.seed(opts.redis_url, ws, opts.profiles)
        print(f"seeded {opts.profiles:,} profiles in {seconds:.1f}s")
        asyncio.run(publish(opts.redis_url, ws))
        port = base.free_port()
        server = base.start_profile(port, database_url, opts.redis_url)
        processes.append(server)
        address = f"127.0.0.1:{port}"
        sample = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=base.user_value(1)),
            context=CONTEXT,
        )
        reply = profile_pb2.Profile.FromString(
            asyncio.run(base.wait_ready(address, metadata, sample.SerializeToString()))
        )
        print(
            f"sample answer: {len(reply.audiences)} stored audiences, context audiences "
            f"{[(a.key, a.holdout) for a in reply.context_audiences]}"
        )
        seconds = asyncio.run(base.warm_wire_cache(opts.redis_url, ws, opts.profiles))
        print(f"warm half read once: {seconds:.1f}s")
        targets = ["plain", "context"]
        for index in range(opts.rounds):
            order = targets if index % 2 == 0 else targets[::-1]
            results: dict[tuple[str, str], dict] = {}  # type: ignore[type-arg]
            for target in order:
                r = run_load(target, "saturate", address, key, server.pid, opts)
                results[target, "saturate"] = r
                print(f"  {index + 1} {target:<8} saturate  {json.dumps(r)}", flush=True)
            both = run_load("mixed", "rate", address, key, server.pid, opts)
            for target in targets:
                results[target, "rate"] = both[target]
                print(f"  {index + 1} {target:<8} rate      {json.dumps(both[target])}", flush=True)
            rounds.append(results)
    finally:
        base._stop(processes)
        asyncio.run(base._flush(opts.redis_url))
        asyncio.run(base.drop_bench_database(database_url, opts.pg))
    print_table(rounds, opts)


def print_table(rounds: list[dict[tuple[str, str], dict]], opts: argparse.Namespace) -> None:  # type: ignore[type-arg]
    def med(target: str, mode: str, field: str) -> float:
        return statistics.median(r[target, mode][field] for r in rounds)

    def ratio(mode: str, field: str) -> float:
        return statistics.median(
            r["context", mode][field] / r["plain", mode][field] for r in rounds
        )

    print()
    print(
        f"{opts.profiles:,} profiles, {opts.rounds} rounds, medians; ratios context/plain per round"
    )
    rate = f"{opts.rate:,.0f}/s"
    print(
        f"| target | p50 ms at {rate} | p99 ms at {rate} | req/s at saturation"
        " | server CPU us/call |"
    )
    print("|---|---:|---:|---:|---:|")
    for target, label in (
        ("plain", "GetProfile (baseline)"),
        ("context", "GetProfile + 10-attribute context, 20 context audiences"),
    ):
        print(
            f"| {label} | {med(target, 'rate', 'p50'):.2f} | {med(target, 'rate', 'p99'):.2f} | "
            f"{med(target, 'saturate', 'rps'):,.0f} | {med(target, 'saturate', 'cpu_us'):.0f} |"
        )
    print()
    print(f"throughput ratio: {ratio('saturate', 'rps'):.2f}x (target >= 0.85x)")
    print(f"p99 ratio at {opts.rate:,.0f} req/s: {ratio('rate', 'p99'):.2f}x (target <= 1.2x)")
    print(f"p50 ratio at {opts.rate:,.0f} req/s: {ratio('rate', 'p50'):.2f}x")
    cpu = ratio("saturate", "cpu_us")
    print(f"server CPU per call ratio: {cpu:.2f}x (calls per CPU-second: {1 / cpu:.2f}x)")
    print(f"(latency runs: {opts.rate:,.0f} req/s in total, plain and context alternating)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=32)
    db = os.environ.get("TEST_REDIS_DB", "12")
    parser.add_argument("--redis-url", default=f"redis://127.0.0.1:6379/{db}")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--load", choices=["plain", "context", "mixed"])
    parser.add_argument("--mode", choices=["rate", "saturate"], default="rate")
    parser.add_argument("--address", default="")
    parser.add_argument("--key", default="")
    opts = parser.parse_args()
    if opts.load:
        print(json.dumps(asyncio.run(load(opts))))
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
