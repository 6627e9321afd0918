"""What GetProfile's Lua-side protobuf encoding costs Redis, and what it saves the service.

    .venv/bin/python bench/profile_redis_cost.py [--profiles 5000] [--rounds 5]

Starts a private redis-server on a free port (so no other client's commands count),
seeds profiles of the load benchmark's shape (bench/profile_load.py: 20 traits, 10
audiences, 2 predictions) and reads each of them once per pass, 32 reads pipelined at
a time, in these forms, alternated pass by pass for --rounds rounds:

- wire, cached: GetProfile's script (READ_PROFILES_LUA, flags `aciprtw`) after a pass
  that filled each profile's wire cache (a profile read again before it changed);
- wire, first read: the same with the wire caches dropped before the pass (each read
  encodes the profile and writes the cache: the first read after a write);
- wire, no cache: the script with its cache bypassed (encodes every read, writes
  nothing): the encoding alone;
- JSON rows: the script without `w` (BatchGetProfiles' form), which the service would
  turn into the message in Python;
- plain commands: no script at all: the GET of the identity key, then GETs, HGETALLs
  and HKEYS of every section (two round trips).

Per read it reports Redis's time inside the commands (INFO commandstats: EVALSHA's
usec for the script forms, the sum over every command for the plain ones), Redis's
process CPU (INFO cpu: parsing and networking too) and the reply's size. It then
times, in this process, what the service would spend building the message from the
JSON rows (the object path: rows -> domain profile -> Profile message ->
SerializeToString), against handing the script's bytes on as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import profile_load as bench  # noqa: E402
import redis.asyncio as redis_asyncio  # noqa: E402

from services.profile import hotread, server, service  # noqa: E402
from services.shared import hotstate  # noqa: E402

BATCH = 32  # reads in flight, as the load benchmark's concurrency
WS = "cost"
# The script with its wire cache bypassed: never looks it up, never writes it.
NO_CACHE_LUA = hotread.READ_PROFILES_LUA.replace("if #mask == 0 then", "if false then")
FORMS = ("wire, cached", "wire, first read", "wire, no cache", "JSON rows", "plain commands")


def _profile_id(pid: int) -> str:
    return f"{pid:0{bench.PID_WIDTH}d}"


async def _commandstats(redis: redis_asyncio.Redis) -> dict[str, tuple[int, int]]:
    stats = await redis.info("commandstats")
    return {name: (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


async def _cpu(redis: redis_asyncio.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(
    redis: redis_asyncio.Redis, read_pass: Callable[[], Awaitable[int]], profiles: int, script: bool
) -> tuple[float, float, float]:
    """(commands' usec, Redis process CPU usec, reply bytes) per profile read."""
    before, cpu_before = await _commandstats(redis), await _cpu(redis)
    reply_bytes = await read_pass()
    after, cpu_after = await _commandstats(redis), await _cpu(redis)
    counted = ["cmdstat_evalsha"] if script else [n for n in after if n != "cmdstat_info"]
    usec = sum(after[n][1] - before.get(n, (0, 0))[1] for n in counted)
    return usec / profiles, (cpu_after - cpu_before) * 1e6 / profiles, reply_bytes / profiles


async def run(url: str, opts: argparse.Namespace) -> None:
    redis = redis_asyncio.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            await redis.ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # polling readiness with a deadline
    await asyncio.to_thread(bench.seed, url, WS, opts.profiles)
    await report(redis, opts)
    await redis.aclose()


async def report(redis: redis_asyncio.Redis, opts: argparse.Namespace) -> None:
    prefix = hotstate.workspace_prefix(WS)
    pids = list(range(1, opts.profiles + 1))
    id_keys = [hotstate.identity_key(WS, "user_id", bench.user_value(p)) for p in pids]
    wire_keys = [hotstate.profile_key(WS, _profile_id(p), "wire") for p in pids]
    read_sha = await redis.script_load(hotread.READ_PROFILES_LUA)
    no_cache_sha = await redis.script_load(NO_CACHE_LUA)

    async def scripted(sha: str, flags: str) -> int:
        size = 0
        for first in range(0, len(pids), BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                for key in id_keys[first : first + BATCH]:
                    pipe.evalsha(sha, 1, key, prefix, flags)
                replies = await pipe.execute()
            size += sum(len(r[0]) if isinstance(r[0], bytes) else _row_size(r[0]) for r in replies)
        return size

    async def plain() -> int:
        size = 0
        for first in range(0, len(pids), BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                for key in id_keys[first : first + BATCH]:
                    pipe.get(key)
                found = await pipe.execute()
            async with redis.pipeline(transaction=False) as pipe:
                for raw in found:
                    pid = raw.decode()
                    pipe.get(hotstate.merged_key(WS, pid))
                    pipe.hget(hotstate.profile_key(WS, pid, "meta"), "last_seen_us")
                    for section in ("traits", "computed", "audiences", "predictions"):
                        pipe.hgetall(hotstate.profile_key(WS, pid, section))
                    pipe.get(hotstate.profile_key(WS, pid, "recs"))
                    pipe.hkeys(hotstate.profile_key(WS, pid, "ids"))
                replies = await pipe.execute()
            size += sum(_row_size(r) for r in replies)
        return size

    async def drop_caches() -> None:
        for first in range(0, len(wire_keys), 1000):
            await redis.delete(*wire_keys[first : first + 1000])

    async def first_read() -> int:
        await drop_caches()
        return await scripted(read_sha, bench.WIRE_FLAGS)

    passes: dict[str, tuple[Callable[[], Awaitable[int]], bool]] = {
        "wire, cached": (lambda: scripted(read_sha, bench.WIRE_FLAGS), True),
        "wire, first read": (first_read, True),
        "wire, no cache": (lambda: scripted(no_cache_sha, bench.WIRE_FLAGS), True),
        "JSON rows": (lambda: scripted(read_sha, bench.WIRE_FLAGS.replace("w", "")), True),
        "plain commands": (plain, False),
    }
    results: dict[str, list[tuple[float, float, float]]] = {form: [] for form in FORMS}
    for _ in range(opts.rounds):
        for form in FORMS:
            if form == "wire, cached":
                await scripted(read_sha, bench.WIRE_FLAGS)  # fill the caches first
            read_pass, script = passes[form]
            results[form].append(await measure(redis, read_pass, len(pids), script))
    print(f"profiles={opts.profiles:,} rounds={opts.rounds}, {BATCH} reads pipelined; medians")
    print()
    print("| form | commands us/read (rounds) | Redis CPU us/read | reply bytes |")
    print("|---|---:|---:|---:|")
    for form in FORMS:
        usec = [r[0] for r in results[form]]
        print(
            f"| {form} | {statistics.median(usec):.1f} ({min(usec):.1f}-{max(usec):.1f}) "
            f"| {statistics.median(r[1] for r in results[form]):.1f} "
            f"| {statistics.median(r[2] for r in results[form]):.0f} |"
        )
    await python_side(redis, id_keys[: min(len(id_keys), 1000)], prefix, read_sha, opts.rounds)


def _row_size(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(len(k) + len(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_row_size(v) for v in value)
    return 0


async def python_side(
    redis: redis_asyncio.Redis, id_keys: list[str], prefix: str, sha: str, rounds: int
) -> None:
    """The service's CPU per read to build the message from JSON rows (the object path)."""
    json_flags = bench.WIRE_FLAGS.replace("w", "")
    async with redis.pipeline(transaction=False) as pipe:
        for key in id_keys:
            pipe.evalsha(sha, 1, key, prefix, json_flags)
        rows = [reply[0] for reply in await pipe.execute()]

    def object_path() -> None:
        for row in rows:
            profile = service._without_consumed(hotread._hot_profile(row))
            server.profile_message(profile).SerializeToString()

    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        object_path()
        timings.append((time.perf_counter() - started) / len(rows) * 1e6)
    print()
    print(
        f"object path in Python (rows -> Profile -> bytes), per read: "
        f"{statistics.median(timings):.1f} us ({min(timings):.1f}-{max(timings):.1f}) "
        "against none for the script's bytes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    port = bench.free_port()
    with tempfile.TemporaryDirectory(prefix="profile_redis_cost_") as scratch:
        redis_server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            cwd=scratch,
            stdout=subprocess.DEVNULL,
        )
        try:
            asyncio.run(run(f"redis://127.0.0.1:{port}/0", opts))
        finally:
            redis_server.terminate()
            redis_server.wait(timeout=10)


if __name__ == "__main__":
    main()
