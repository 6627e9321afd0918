"""Load benchmark of GetProfile against its transport and storage limits.

    .venv/bin/python bench/profile_load.py [--profiles 1000000] [--duration 10]

Seeds N profiles (20 traits, 10 audiences, 2 predictions each) into Redis db 12 with
pipelined writes, starts one profile process (then two sharing the port through
SO_REUSEPORT), and drives them from a load generator in a second process: a fixed
offered rate and a saturation run, reporting throughput and p50/p99/p99.9. Baselines
measured in the same run: a bare grpc.aio server answering with a message of the same
size (the transport limit), the same echo awaiting one Redis GET per call over the
services' pipelined connection (transport plus one round trip: the floor for any
server that answers from Redis), and the same Lua read issued straight from redis-py
(the storage limit). For every server process it also reports the CPU time the server
spent per call (from /proc, warm-up calls included), which moves much less with other
work on a shared machine than throughput does, and Redis's CPU per call. The one-
process GetProfile runs come twice: "cold", every profile's wire cache emptied before
the run, so each read encodes the profile (its first read after a write), and warm,
after a pass that read each of the 100,000 requested profiles once, so each read is
served from the cache (a profile read again before anything it shows changed); the
later runs are warm. With `--cap N` it also runs 1 and 2 processes each capped at N
CPUs (a cgroup; root), to show SO_REUSEPORT scaling on a machine without a spare core
per process. Redis db 12
is flushed and the bench database dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import asyncpg  # noqa: E402
import grpc  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as redis_asyncio  # noqa: E402
from audiences.v1 import common_pb2, profile_pb2  # noqa: E402

from services.profile.hotread import READ_PROFILES_LUA  # noqa: E402
from services.shared import hotstate  # noqa: E402
from services.shared.redis_pipelined import create_pipelined  # noqa: E402

METHOD = "/audiences.v1.ProfileService/GetProfile"
ECHO_METHOD = "/bench.Echo/Get"
NOW_US = 1_735_689_600_000_000
CHANNELS = 8  # separate connections, so SO_REUSEPORT can spread them over processes
# The capped scaling runs use more connections: SO_REUSEPORT places each connection
# on one process for its lifetime, so with 8 an uneven split (say 5/3) would cap the
# closed-loop load at the busier process rather than measure the processes.
SCALING_CHANNELS = 32
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# Distinct profiles the load generator asks for (fewer when there are fewer profiles):
# more than any run sends, so a run that starts with an empty wire cache never reads a
# profile twice (a cold run), and one after the warm-up pass reads only cached ones.
REQUEST_POOL = 100_000
# The read every GetProfile makes: all sections, in the wire form (READ_PROFILES_LUA).
WIRE_FLAGS = "aciprtw"


def _identity(data: bytes) -> bytes:
    return data


# ---------------------------------------------------------------- seeding


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


# Profile ids are zero-padded to a fixed width so every profile's RESP has the same
# lengths: one template, and seeding a profile is a single bytes.join.
PID_WIDTH = 7
_MARKER = b"\x01\x02\x03\x04\x05\x06\x07"


def user_value(pid: int) -> str:
    """The user_id of seeded profile `pid`."""
    return f"u{pid:0{PID_WIDTH}d}"


def _profile_template(ws: str) -> list[bytes]:
    """One profile's commands (20 traits, 10 audiences, 2 predictions), split at the id."""
    pid = _MARKER
    key = f"hs:{{{ws}}}:p:".encode() + pid + b":"
    traits: list[bytes] = []
    for t in range(20):
        kind = t % 4
        value = {
            0: b'"value-' + pid + b"-%02d" % t + b'"',
            1: pid,  # an integer that differs per profile
            2: b"true",
            3: b'{"city":"Lyon","zip":"69001","tier":' + pid + b"}",
        }[kind]
        traits += [b"trait_%02d" % t, value]
    audiences: list[bytes] = []
    for a in range(10):
        audiences += [b"audience_%02d" % a, b"%d" % (NOW_US - a * 86_400_000_000)]
    predictions: list[bytes] = []
    for name, probability in ((b"purchase_7d", 0.8312), (b"churn_30d", 0.0457)):
        score = {
            "probability": probability,
            "percentile": round(probability * 100, 2),
            "scored_at_us": NOW_US,
            "top_features": ["orders_90d", "recency_days"],
        }
        predictions += [name, orjson.dumps(score)]
    user = b"u" + pid
    commands = b"".join(
        [
            _resp(b"SET", f"hs:{{{ws}}}:id:user_id:".encode() + user, pid),
            _resp(b"HSET", key + b"ids", b"user_id:" + user, b"1"),
            _resp(b"HSET", key + b"meta", b"last_seen_us", b"%d" % NOW_US, b"created_at_us", b"1"),
            _resp(b"HSET", key + b"traits", *traits),
            _resp(b"HSET", key + b"audiences", *audiences),
            _resp(b"HSET", key + b"predictions", *predictions),
        ]
    )
    return commands.split(_MARKER)


def seed(redis_url: str, ws: str, profiles: int) -> float:
    """Pipe RESP straight into `redis-cli --pipe` (the fastest pipelined writer); seconds."""
    host, port, db = _redis_parts(redis_url)
    started = time.perf_counter()
    pipe = subprocess.Popen(
        ["redis-cli", "-h", host, "-p", port, "-n", db, "--pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert pipe.stdin is not None
    parts = _profile_template(ws)
    step = 10_000
    for first in range(1, profiles + 1, step):
        pids = range(first, min(first + step, profiles + 1))
        pipe.stdin.write(b"".join([(b"%07d" % pid).join(parts) for pid in pids]))
    pipe.stdin.close()
    if pipe.wait() != 0:
        raise RuntimeError("redis-cli --pipe failed")
    return time.perf_counter() - started


def _redis_parts(url: str) -> tuple[str, str, str]:
    rest = url.split("://", 1)[1]
    hostport, _, db = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, port or "6379", db or "0"


# ---------------------------------------------------------------- servers


async def serve_echo(port: int, payload_path: str, redis_url: str = "") -> None:
    """A bare grpc.aio server: no interceptors, answers every call with fixed bytes.

    With `redis_url`, each call first awaits one GET of a missing key over the
    services' own pipelined connection: the transport plus one Redis round trip,
    the least any server answering from Redis can cost.
    """
    payload = Path(payload_path).read_bytes()  # noqa: ASYNC240 - once, before serving
    pipelined = create_pipelined(redis_url) if redis_url else None

    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if pipelined is not None:
            await pipelined.execute("GET", "bench:no-such-key")
        return payload

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Get": grpc.unary_unary_rpc_method_handler(
                get, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def start_profile(port: int, database_url: str, redis_url: str) -> subprocess.Popen[bytes]:
    """Start a profile process on `port`; wait_started() tells when it serves."""
    env = {
        **os.environ,
        "GRPC_PORT": str(port),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PROFILE_HTTP_PORT": "0",
        "OTEL_TRACES_EXPORTER": "none",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}",
    }
    handle, name = tempfile.mkstemp(prefix="bench_profile_log_", suffix=".txt")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.profile"], env=env, cwd=ROOT, stderr=handle
    )
    os.close(handle)
    _LOGS[process.pid] = Path(name)
    return process


_LOGS: dict[int, Path] = {}


def wait_started(process: subprocess.Popen[bytes]) -> None:
    """Until `process` logs that it serves: with SO_REUSEPORT a call to the shared port
    may be answered by another process, so only its own log says this one is up."""
    log = _LOGS[process.pid]
    deadline = time.monotonic() + 60
    while "serving on" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"profile process did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)  # polling a log file for readiness, with a deadline


async def wait_ready(address: str, metadata: tuple[tuple[str, str], ...], request: bytes) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.unary_unary(METHOD, _identity, _identity)
                return await call(request, metadata=metadata, timeout=2)
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # polling readiness with a deadline


# ---------------------------------------------------------------- load generator


def _summary(
    latencies: list[float], elapsed: float, errors: int, warm_calls: int
) -> dict[str, float]:
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0
        )

    return {
        "rps": len(latencies) / elapsed,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "errors": errors,
        "n": len(latencies),
        "calls": len(latencies) + errors + warm_calls,  # every call, to divide server CPU by
    }


async def _drive(call_one, mode: str, duration: float, rate: float, concurrency: int) -> dict:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    errors = 0
    warm_calls = 0
    # Warm up connections and caches; not measured.
    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        await asyncio.gather(*(call_one(i) for i in range(concurrency)))
        warm_calls += concurrency
    if mode == "saturate":
        stop_at = time.perf_counter() + duration

        async def worker(seed: int) -> None:
            nonlocal errors
            i = seed
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await call_one(i)
                    latencies.append(time.perf_counter() - started)
                except Exception:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(s) for s in range(concurrency)))
        return _summary(latencies, time.perf_counter() - started, errors, warm_calls)

    # Open loop at a fixed offered rate; latency counts from the scheduled send time so
    # a stalled server cannot hide its queueing (no coordinated omission).
    total = int(rate * duration)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        try:
            await call_one(i)
            latencies.append(time.perf_counter() - scheduled)
        except Exception:
            errors += 1

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return _summary(latencies, time.perf_counter() - start, errors, warm_calls)


async def load(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    picks = pool(args.profiles)
    if args.load == "redis":
        # Open-loop runs can have more calls in flight than the saturation concurrency.
        client = redis_asyncio.Redis.from_url(args.redis_url, max_connections=512)
        script = client.register_script(READ_PROFILES_LUA)
        prefix = hotstate.workspace_prefix(args.workspace)
        keys = [[hotstate.identity_key(args.workspace, "user_id", user_value(p))] for p in picks]

        async def call_one(i: int) -> None:
            await script(keys=keys[i % len(keys)], args=[prefix, WIRE_FLAGS])

        result = await _drive(call_one, args.mode, args.duration, args.rate, args.concurrency)
        await client.aclose()
        return result
    method = ECHO_METHOD if args.load == "echo" else METHOD
    requests = [
        profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=user_value(p))
        ).SerializeToString()
        for p in picks
    ]
    metadata = (("authorization", f"Bearer {args.key}"),)
    channels = [
        grpc.aio.insecure_channel(args.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.channels)
    ]
    calls = [channel.unary_unary(method, _identity, _identity) for channel in channels]

    async def call_one(i: int) -> None:
        await calls[i % len(calls)](requests[i % len(requests)], metadata=metadata, timeout=10)

    result = await _drive(call_one, args.mode, args.duration, args.rate, args.concurrency)
    for channel in channels:
        await channel.close()
    return result


def pool(profiles: int) -> list[int]:
    """The profiles the load generator asks for, in order: distinct when there are enough."""
    rng = random.Random(11)
    if profiles >= REQUEST_POOL:
        return rng.sample(range(1, profiles + 1), REQUEST_POOL)
    return [rng.randint(1, profiles) for _ in range(REQUEST_POOL)]


async def drop_wire_cache(redis_url: str, ws: str) -> int:
    """Empty the profiles' wire caches (as if every profile had just been written)."""
    redis = redis_asyncio.Redis.from_url(redis_url)
    dropped = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=hotstate.profile_key(ws, "*", "wire"), count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            dropped += await redis.unlink(*batch)
            batch.clear()
    if batch:
        dropped += await redis.unlink(*batch)
    # UNLINK frees in Redis's background thread: let it finish before the run starts,
    # or the run shares the CPU with it.
    deadline = time.monotonic() + 60
    while (await redis.info("memory")).get("lazyfree_pending_objects", 0):
        if time.monotonic() > deadline:
            raise RuntimeError("Redis did not finish freeing the dropped caches")
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    await redis.aclose()
    return dropped


async def warm_wire_cache(redis_url: str, ws: str, profiles: int) -> float:
    """Read every pooled profile once with GetProfile's script, filling its wire cache."""
    started = time.perf_counter()
    redis = redis_asyncio.Redis.from_url(redis_url)
    script = redis.register_script(READ_PROFILES_LUA)
    prefix = hotstate.workspace_prefix(ws)
    picks = pool(profiles)
    for first in range(0, len(picks), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for pid in picks[first : first + 1000]:
                key = hotstate.identity_key(ws, "user_id", user_value(pid))
                await script(keys=[key], args=[prefix, WIRE_FLAGS], client=pipe)
            await pipe.execute()
    await redis.aclose()
    return time.perf_counter() - started


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(redis_url: str) -> float:
    """CPU time the Redis server has used so far (INFO cpu: user + system)."""
    host, port, _ = _redis_parts(redis_url)
    out = subprocess.run(
        ["redis-cli", "-h", host, "-p", port, "INFO", "cpu"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fields = dict(line.split(":", 1) for line in out.split() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def cap_cpu(pid: int, cpus: float) -> Path:
    """Limit process `pid` to `cpus` CPUs in a cgroup of its own (root; cgroup v2 or v1).

    A CPU quota per process stands in for a core per process on a machine that has
    too few cores for the servers, the load generator and Redis each to have one.
    """
    name = f"audiences_bench_{pid}"
    quota = int(cpus * 100_000)
    controllers = CGROUP_V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        group = CGROUP_V2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{quota} 100000")
    else:
        group = CGROUP_V1_CPU / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    (group / "cgroup.procs").write_text(str(pid))
    return group


def run_load(
    target: str,
    mode: str,
    address: str,
    opts: argparse.Namespace,
    ws: str,
    key: str,
    servers: list[int] | None = None,
    channels: int = CHANNELS,
) -> dict:  # type: ignore[type-arg]
    """One measurement, from a separate load-generator process.

    With `servers` (pids), also the CPU those server processes spent per call (and
    each one's share of it): on a shared machine throughput moves with everyone's
    load, CPU per call much less. Redis's CPU per call too (it shares the machine's
    cores; other clients of that Redis count as well, which the bare echo's figure
    shows).
    """
    before = [cpu_seconds([pid]) for pid in servers or []]
    redis_before = redis_cpu_seconds(opts.redis_url)
    command = [
        sys.executable,
        __file__,
        "--load",
        target,
        "--mode",
        mode,
        "--address",
        address,
        "--workspace",
        ws,
        "--key",
        key,
        "--redis-url",
        opts.redis_url,
        "--profiles",
        str(opts.profiles),
        "--duration",
        str(opts.duration),
        "--rate",
        str(opts.rate),
        "--concurrency",
        str(opts.concurrency),
        "--channels",
        str(channels),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if servers:
        spent = [cpu_seconds([pid]) - b for pid, b in zip(servers, before, strict=True)]
        result["cpu_us"] = sum(spent) / result["calls"] * 1e6
        result["cpu_split"] = [round(s / sum(spent), 2) for s in spent] if sum(spent) else []
    # For the bare echo this is Redis's background work (other clients of a shared Redis).
    redis_spent = redis_cpu_seconds(opts.redis_url) - redis_before
    result["redis_cpu_us"] = redis_spent / result["calls"] * 1e6
    return result


# ---------------------------------------------------------------- orchestration


async def create_bench_database(base_url: str) -> tuple[str, dict[str, str]]:
    from services.shared.cli import create_workspace, run_migrate
    from services.shared.config import Settings

    name = "bench_profile_" + secrets.token_hex(4)
    dsn = base_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = base_url.rsplit("/", 1)[0] + "/" + name
    settings = Settings(database_url=url)
    await run_migrate(settings, down=False)
    return url, await create_workspace(settings, "bench")


async def drop_bench_database(url: str, base_url: str) -> None:
    dsn = base_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await admin.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log = _LOGS.pop(process.pid, None)
        if log is not None:
            log.unlink(missing_ok=True)


async def _flush(redis_url: str) -> str:
    """Empty the bench's Redis db; returns the memory it used before."""
    # Dropping millions of keys blocks a synchronous FLUSHDB past the client timeout.
    redis = redis_asyncio.Redis.from_url(redis_url, socket_timeout=120)
    memory = (await redis.info("memory"))["used_memory_human"]
    await redis.flushdb(asynchronous=True)
    await redis.aclose()
    return str(memory)


async def _wait_echo(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)


def orchestrate(opts: argparse.Namespace) -> None:
    """Seed, start the servers, run every measurement, clean up, print the table."""
    if opts.redis_url.rsplit("/", 1)[1] in ("0", "13"):
        raise SystemExit("use a Redis db of its own (not 0, not 13): it is flushed")
    asyncio.run(_flush(opts.redis_url))
    database_url, keys = asyncio.run(create_bench_database(opts.pg))
    ws, key = keys["workspace_id"], keys["profile_key"]
    metadata = (("authorization", f"Bearer {key}"),)
    rows: list[tuple[str, str, dict]] = []  # type: ignore[type-arg]
    processes: list[subprocess.Popen[bytes]] = []
    groups: list[Path] = []
    opts.load_before = os.getloadavg()[0]
    # The echo server reads the reply bytes from a file; the system temp dir, not a fixed path.
    handle, name = tempfile.mkstemp(prefix="bench_profile_payload_", suffix=".bin")
    os.close(handle)
    payload = Path(name)
    try:
        seconds = seed(opts.redis_url, ws, opts.profiles)
        print(f"seeded {opts.profiles:,} profiles in {seconds:.1f}s", flush=True)
        port = free_port()
        address = f"127.0.0.1:{port}"
        processes.append(start_profile(port, database_url, opts.redis_url))
        sample = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=user_value(1))
        ).SerializeToString()
        reply = asyncio.run(wait_ready(address, metadata, sample))
        payload.write_bytes(reply)
        print(f"GetProfile response: {len(reply)} bytes", flush=True)

        echo_port = free_port()
        echo_address = f"127.0.0.1:{echo_port}"
        echo = subprocess.Popen(
            [sys.executable, __file__, "--serve-echo", str(echo_port), str(payload)], cwd=ROOT
        )
        processes.append(echo)
        asyncio.run(_wait_echo(echo_address))
        echo_get_port = free_port()
        echo_get_address = f"127.0.0.1:{echo_get_port}"
        echo_get = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-echo",
                str(echo_get_port),
                str(payload),
                "--echo-redis",
                opts.redis_url,
            ],
            cwd=ROOT,
        )
        processes.append(echo_get)
        asyncio.run(_wait_echo(echo_get_address))

        # The GetProfile rows come twice: with every wire cache empty before the run
        # (each read encodes and caches the profile: its first read after a write)
        # and after a pass that read every pooled profile once (each read is served
        # from the cache: a profile read again before anything it shows changed).
        plan = [
            ("echo (bare grpc.aio)", "echo", echo_address, [echo.pid], None),
            ("echo + 1 Redis GET", "echo", echo_get_address, [echo_get.pid], None),
            ("GetProfile, 1 process, cold", "profile", address, [processes[0].pid], "cold"),
            ("GetProfile, 1 process", "profile", address, [processes[0].pid], "warm"),
            ("redis-py EVALSHA", "redis", "", [], None),
        ]
        for label, target, where, pids, cache in plan:
            if cache == "warm":
                seconds = asyncio.run(warm_wire_cache(opts.redis_url, ws, opts.profiles))
                print(f"  read the request pool once: {seconds:.1f}s", flush=True)
            for mode in ("rate", "saturate"):
                if cache == "cold":
                    asyncio.run(drop_wire_cache(opts.redis_url, ws))
                result = run_load(target, mode, where, opts, ws, key, pids)
                rows.append((label, mode, result))
                print(f"  {label:<28} {mode:<9} {result}", flush=True)
        _stop([echo, echo_get])
        processes.remove(echo)
        processes.remove(echo_get)

        processes.append(start_profile(port, database_url, opts.redis_url))
        wait_started(processes[-1])
        asyncio.run(wait_ready(address, metadata, sample))
        both = [p.pid for p in processes]
        for mode in ("rate", "saturate"):
            result = run_load("profile", mode, address, opts, ws, key, both)
            rows.append(("GetProfile, 2 processes", mode, result))
            print(f"  {'GetProfile, 2 processes':<28} {mode:<9} {result}", flush=True)
        _stop(processes)
        processes.clear()
        if opts.cap:
            rows += scaling_capped(opts, database_url, ws, key, groups)
    finally:
        _stop(processes)
        for group in groups:
            group.rmdir()  # empty once its process has exited
        payload.unlink(missing_ok=True)
        print(f"Redis memory with the seeded profiles: {asyncio.run(_flush(opts.redis_url))}")
        asyncio.run(drop_bench_database(database_url, opts.pg))
    print_table(rows, opts)


def scaling_capped(
    opts: argparse.Namespace, database_url: str, ws: str, key: str, groups: list[Path]
) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    """Saturation with 1, then 2 profile processes sharing the port, each capped at
    `opts.cap` CPUs, over SCALING_CHANNELS connections.

    Each process gets a fixed CPU budget, as it would get a core of its own on a
    bigger machine, and the caps leave CPU for the load generator and Redis: whether
    throughput then doubles with the second process is what SO_REUSEPORT scaling
    means, measurable on 2 cores.
    """
    rows = []
    port = free_port()
    address = f"127.0.0.1:{port}"
    metadata = (("authorization", f"Bearer {key}"),)
    sample = profile_pb2.GetProfileRequest(
        identifier=common_pb2.Identifier(type="user_id", value=user_value(1))
    ).SerializeToString()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for count in (1, 2):
            process = start_profile(port, database_url, opts.redis_url)
            processes.append(process)
            wait_started(process)  # started uncapped: the cap is for serving, not importing
            groups.append(cap_cpu(process.pid, opts.cap))
            asyncio.run(wait_ready(address, metadata, sample))
            label = f"GetProfile, {count} x {opts.cap:g} CPU"
            pids = [p.pid for p in processes]
            result = run_load("profile", "saturate", address, opts, ws, key, pids, SCALING_CHANNELS)
            rows.append((label, "saturate", result))
            print(f"  {label:<28} saturate  {result}", flush=True)
    finally:
        _stop(processes)
    return rows


def print_table(rows: list[tuple[str, str, dict]], opts: argparse.Namespace) -> None:  # type: ignore[type-arg]
    echo_sat = next(r for label, mode, r in rows if label.startswith("echo") and mode == "saturate")
    one_sat = next(
        r for label, mode, r in rows if label == "GetProfile, 1 process" and mode == "saturate"
    )
    print()
    print(
        f"profiles={opts.profiles:,} duration={opts.duration}s rate={opts.rate:.0f}/s "
        f"concurrency={opts.concurrency} (saturation), {os.cpu_count()} cores, "
        f"load average {opts.load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print()
    print(
        "| target | run | req/s | p50 ms | p99 ms | p99.9 ms | errors | req/s vs echo "
        "| server CPU us/call | Redis CPU us/call |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, mode, r in rows:
        run = f"fixed {opts.rate:.0f}/s" if mode == "rate" else f"saturation c={opts.concurrency}"
        ratio = r["rps"] / echo_sat["rps"] if mode == "saturate" else float("nan")
        ratio_text = f"{ratio:.2f}x" if mode == "saturate" else ""
        cpu = f"{r['cpu_us']:.0f}" if "cpu_us" in r else ""
        if len(r.get("cpu_split", [])) > 1:
            cpu += " (" + "/".join(f"{share:.0%}" for share in r["cpu_split"]) + ")"
        redis_cpu = f"{r['redis_cpu_us']:.0f}" if "redis_cpu_us" in r else ""
        print(
            f"| {label} | {run} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['p999']:.2f} | {r['errors']} | {ratio_text} | {cpu} | {redis_cpu} |"
        )
    two_sat = next(
        r for label, mode, r in rows if label == "GetProfile, 2 processes" and mode == "saturate"
    )
    cold_sat = next(
        r
        for label, mode, r in rows
        if label == "GetProfile, 1 process, cold" and mode == "saturate"
    )
    print()
    print(
        f"GetProfile vs echo (saturation): {one_sat['rps'] / echo_sat['rps']:.2f}x warm, "
        f"{cold_sat['rps'] / echo_sat['rps']:.2f}x cold"
    )
    print(f"scaling 1 -> 2 processes (saturation): {two_sat['rps'] / one_sat['rps']:.2f}x")
    capped = [r for label, _, r in rows if " CPU" in label]
    if len(capped) == 2:
        print(
            f"scaling 1 -> 2 processes capped at {opts.cap:g} CPU each: "
            f"{capped[1]['rps'] / capped[0]['rps']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--channels", type=int, default=CHANNELS)
    parser.add_argument(
        "--cap",
        type=float,
        default=0.0,
        help="also measure 1 and 2 processes each capped at this many CPUs (needs root)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--serve-echo", nargs=2, metavar=("PORT", "PAYLOAD"))
    parser.add_argument("--echo-redis", default="", help="(with --serve-echo) GET per call")
    parser.add_argument("--load", choices=["echo", "redis", "profile"])
    parser.add_argument("--mode", choices=["rate", "saturate"], default="rate")
    parser.add_argument("--address", default="")
    parser.add_argument("--workspace", default="")
    parser.add_argument("--key", default="")
    opts = parser.parse_args()
    if opts.serve_echo:
        asyncio.run(serve_echo(int(opts.serve_echo[0]), opts.serve_echo[1], opts.echo_redis))
    elif opts.load:
        print(json.dumps(asyncio.run(load(opts))))
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
