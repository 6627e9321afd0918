"""How fast `audiences demo load` fills a workspace: events per second end to end
(the console script's start, generating the simulated shop, batched Batch calls to
ingest as a process on Postgres and Redis, every event durable before its ack), with
batches sent 4 at a time (the default) against one at a time in the same run.

    .venv/bin/python bench/cli_send.py --profiles 1000 --runs 5

Each run loads new people (a new seed), so nothing is a duplicate; runs alternate
between the two settings so load on the machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.shared.cli import create_workspace
from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from tests.helpers import backends
from tests.helpers.servers import as_processes

AUDIENCES = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "audiences")


async def load(env: dict[str, str], profiles: int, seed: int, concurrency: int) -> float:
    """Events per second of one `demo load` run."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        AUDIENCES,
        "demo",
        "load",
        "--profiles",
        str(profiles),
        "--seed",
        str(seed),
        "--concurrency",
        str(concurrency),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    elapsed = time.perf_counter() - started
    line = out.decode().strip().splitlines()[-1]  # accepted=N duplicates=0 rejected=0
    accepted = int(line.split()[0].split("=")[1])
    assert process.returncode == 0 and "duplicates=0 rejected=0" in line, line
    return accepted / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    url = await backends.create_database()
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    redis_url = backends.test_redis_url()
    try:
        keys = await create_workspace(Settings(database_url=url, redis_url=redis_url), "bench")
        async with as_processes(url, redis_url, ["ingest"]) as addresses:
            env = {**os.environ, "INGEST_ADDR": addresses["ingest"]}
            env["AUDIENCES_INGEST_KEY"] = keys["ingest_key"]
            rates: dict[int, list[float]] = {1: [], 4: []}
            for run in range(args.runs):
                for concurrency in (1, 4):
                    seed = 1000 + 2 * run + (concurrency == 4)
                    rates[concurrency].append(await load(env, args.profiles, seed, concurrency))
    finally:
        await backends.drop_database(url)
    baseline = statistics.median(rates[1])
    print(f"\n`audiences demo load --profiles {args.profiles}`, {args.runs} runs each")
    print("| batches in flight | median events/s | worst run (p99) events/s | ratio vs 1 |")
    print("|---|---|---|---|")
    for concurrency, found in rates.items():
        median = statistics.median(found)
        print(f"| {concurrency} | {median:,.0f} | {min(found):,.0f} | {median / baseline:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
