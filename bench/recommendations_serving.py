"""GetRecommendations beside GetProfile: throughput and latency of both in one run.

    TEST_REDIS_DB=N .venv/bin/python bench/recommendations_serving.py \\
        [--profiles 10000] [--concurrency 32] [--duration 5] [--rounds 3] [--popular]

A fresh Postgres database and the Redis database of TEST_REDIS_DB (flushed first) are
used. N profiles are seeded into the hot state (identifiers and 10 traits each) and
given 10 recommended items each (with metadata) through the writer training uses; the
profile service runs as its own process. Each round drives both RPCs in turn (rotated
order, so a burst of other work on a shared machine lands on different targets in
different rounds), each for --duration seconds with --concurrency calls in flight on
random profiles, from this process (uvloop). The table gives each figure's median over
the rounds and the ratio against GetProfile taken within each round (then the median):
GetProfile is the baseline, since both answer from one Redis round trip.

With --popular, two more sets of N profiles without a list of their own are seeded,
served the workspace's popular list (10 items, and a reserve of 10): one set that
consumed nothing since the training, and one whose recs_consumed set holds 2 of the
popular items (the read script decodes, filters and refills the list); both are driven
through GetRecommendations too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import grpc
import orjson
import redis.asyncio as redis_asyncio
import uvloop
from audiences.v1 import common_pb2, profile_pb2, profile_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.profile.recommendations.hotwrite import RecommendationWriter
from services.shared import hotstate
from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.conftest import make_workspace
from tests.helpers import backends
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import as_processes
from tests.integration.profile.seeding import HotSeed, seed_hot


async def seed(redis: redis_asyncio.Redis, ws: str, profiles: int) -> None:
    """Hot profiles with 10 traits and 10 recommended items each."""
    traits = {f"trait_{n}": f"value {n}" for n in range(10)}
    for first in range(0, profiles, 50):
        await asyncio.gather(
            *(
                seed_hot(
                    redis,
                    ws,
                    HotSeed(pid, [("user_id", f"u{pid}")], traits, created_at_us=1, last_seen_us=1),
                )
                for pid in range(first + 1, min(first + 50, profiles) + 1)
            )
        )
    metadata = orjson.dumps({"name": "Kettle", "price": 9.99, "in_stock": True}).decode()
    lists = [
        (
            pid,
            [
                {"item_id": f"sku-{(pid * 7 + n) % 10_000}", "score": round(1 - n / 10, 6),
                 "model": "bench", "metadata": metadata}
                for n in range(10)
            ],
        )
        for pid in range(1, profiles + 1)
    ]  # fmt: skip
    await RecommendationWriter(redis).replace(ws, "bench", lists)


async def seed_cold(redis: redis_asyncio.Redis, ws: str, profiles: int) -> None:
    """Profiles N+1..3N without a list of their own, served the popular list; those
    above 2N consumed its 2nd and 5th items since the training."""
    traits = {f"trait_{n}": f"value {n}" for n in range(10)}
    for first in range(profiles + 1, 3 * profiles + 1, 50):
        await asyncio.gather(
            *(
                seed_hot(
                    redis,
                    ws,
                    HotSeed(pid, [("user_id", f"u{pid}")], traits, created_at_us=1, last_seen_us=1),
                )
                for pid in range(first, min(first + 50, 3 * profiles + 1))
            )
        )
    metadata = orjson.dumps({"name": "Kettle", "price": 9.99, "in_stock": True}).decode()
    items = [
        {"item_id": f"pop-{n}", "score": round(1 - n / 20, 6), "model": "bench",
         "metadata": metadata}
        for n in range(20)
    ]  # fmt: skip
    await RecommendationWriter(redis).set_popular(ws, "bench", items[:10], items[10:])
    async with redis.pipeline(transaction=False) as pipe:
        for pid in range(2 * profiles + 1, 3 * profiles + 1):
            pipe.sadd(hotstate.profile_key(ws, pid, "recs_consumed"), "bench:pop-1", "bench:pop-4")
        await pipe.execute()


async def drive(call, profiles: int, concurrency: int, duration: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Calls in flight for `duration` seconds: throughput and latency percentiles."""
    latencies: list[float] = []
    rng = random.Random(1)
    stop = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop:
            pid = rng.randint(1, profiles)
            started = time.perf_counter()
            await call(pid)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)],
    }


async def run(options: argparse.Namespace) -> None:
    database_url = await backends.create_database()
    redis_url = backends.test_redis_url()
    engine = create_engine(database_url)
    redis = redis_asyncio.Redis.from_url(redis_url)
    try:
        await migrate.upgrade(engine)
        await engine.dispose()
        await redis.flushdb(asynchronous=True)
        resources = await Resources.open(
            Settings(database_url=database_url, redis_url=redis_url), "bench"
        )
        try:
            workspace = await make_workspace(resources, "serving")
        finally:
            await resources.close()
        started = time.perf_counter()
        await seed(redis, workspace.workspace_id, options.profiles)
        if options.popular:
            await seed_cold(redis, workspace.workspace_id, options.profiles)
        print(f"seeded {options.profiles} profiles in {time.perf_counter() - started:.1f} s")
        environment = {"RECOMMENDATIONS_SCHEDULE_SECONDS": "0"}
        async with as_processes(database_url, redis_url, ["profile"], environment) as addresses:
            async with grpc.aio.insecure_channel(addresses["profile"]) as channel:
                stub = profile_pb2_grpc.ProfileServiceStub(channel)
                key = bearer(workspace.profile)

                def ident(pid: int) -> common_pb2.Identifier:
                    return common_pb2.Identifier(type="user_id", value=f"u{pid}")

                async def get_profile(pid: int) -> None:
                    reply = await stub.GetProfile(
                        profile_pb2.GetProfileRequest(identifier=ident(pid)), metadata=key
                    )
                    assert len(reply.recommendations) == 10

                async def get_recommendations(pid: int) -> None:
                    reply = await stub.GetRecommendations(
                        profile_pb2.GetRecommendationsRequest(identifier=ident(pid), limit=10),
                        metadata=key,
                    )
                    assert len(reply.recommendations) == 10

                targets = {"GetProfile": get_profile, "GetRecommendations": get_recommendations}
                if options.popular:
                    n = options.profiles

                    async def popular(pid: int) -> None:
                        await get_recommendations(pid + n)

                    async def popular_consumed(pid: int) -> None:
                        await get_recommendations(pid + 2 * n)

                    targets["GetRecommendations, popular list"] = popular
                    targets["GetRecommendations, popular list, 2 consumed"] = popular_consumed
                # Warm-up: every profile read once by each (the wire caches filled).
                for call in targets.values():
                    await drive(call, options.profiles, options.concurrency, 1.0)
                figures: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
                names = list(targets)
                for round_ in range(options.rounds):
                    shift = round_ % len(names)
                    order = names[shift:] + names[:shift]
                    for name in order:
                        figures[name].append(
                            await drive(
                                targets[name],
                                options.profiles,
                                options.concurrency,
                                options.duration,
                            )
                        )
    finally:
        await redis.flushdb(asynchronous=True)
        await redis.aclose()
        await backends.drop_database(database_url)
    print(
        f"\n{options.profiles} profiles, {options.concurrency} in flight, "
        f"{options.rounds} rounds of {options.duration:.0f} s; medians over rounds"
    )
    print("| RPC | calls/s | p50 ms | p99 ms | calls/s vs GetProfile | p99 vs GetProfile |")
    print("|---|---|---|---|---|---|")
    base = figures["GetProfile"]
    for name, rounds in figures.items():

        def median(field: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[field] for r in rounds)

        rps_ratio = statistics.median(
            r["rps"] / b["rps"] for r, b in zip(rounds, base, strict=True)
        )
        p99_ratio = statistics.median(
            r["p99_ms"] / b["p99_ms"] for r, b in zip(rounds, base, strict=True)
        )
        print(
            f"| {name} | {median('rps'):.0f} | {median('p50_ms'):.2f} | "
            f"{median('p99_ms'):.2f} | {rps_ratio:.2f} | {p99_ratio:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--popular", action="store_true", help="also profiles served the popular list"
    )
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
