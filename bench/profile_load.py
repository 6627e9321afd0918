"""Load benchmark of GetProfile against its transport and storage limits.

    .venv/bin/python bench/profile_load.py [--profiles 200000] [--duration 3] [--rounds 3]

Seeds N profiles (20 traits, 10 audiences, 2 predictions each) into a Redis db with
pipelined writes and measures, from a load generator in a separate process, a fixed
offered rate (p50/p99 at --rate) and a saturation run (throughput at --concurrency
calls in flight) of each target. Every server runs on uvloop, the event loop the
services run on, so the ratios compare like with like:

- echo: a bare grpc.aio server answering with fixed bytes of GetProfile's size
  (the transport limit, the baseline every ratio is taken against);
- echo + 1 Redis GET: the same echo awaiting one GET per call over the services'
  pipelined connection (the floor for any server that answers from Redis);
- GetProfile with tracing off (OTEL_TRACES_EXPORTER=none, the default) and on (the
  SDK tracer provider with the gRPC, Redis and SQLAlchemy instrumentations, spans
  batched to an exporter that drops them: what a traced deployment pays, without its
  collector), each cold (every profile it reads had its wire cache dropped just
  before: a first read after a write) and warm (profiles read once before);
- redis-py EVALSHA: GetProfile's Lua read issued straight from redis-py (the storage
  limit).

The targets run in rounds (--rounds), in a rotated order each round, so a burst of
other work on a shared machine lands on different targets in different rounds; the
table gives each figure's median over the rounds, and each ratio is taken within a
round and then the median. It also reports the CPU the server process spent per
call (from /proc, warm-up calls included), which moves much less with other load
than throughput does, and Redis's CPU per call. With `--scaling` it then runs two
profile processes sharing the port through SO_REUSEPORT, and with `--cap N` one and
two processes each capped at N CPUs (a cgroup; root), to show that scaling on a
machine without a spare core per process. The Redis db is flushed and the bench
database dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import asyncpg  # noqa: E402
import grpc  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as redis_asyncio  # noqa: E402
import uvloop  # noqa: E402
from audiences.v1 import common_pb2, profile_pb2  # noqa: E402

from services.profile.hotread import READ_PROFILES_LUA  # noqa: E402
from services.shared import hotstate  # noqa: E402
from services.shared.redis_pipelined import create_pipelined  # noqa: E402

METHOD = "/audiences.v1.ProfileService/GetProfile"
ECHO_LABEL = "echo (bare grpc.aio, uvloop)"
ECHO_METHOD = "/bench.Echo/Get"
NOW_US = 1_735_689_600_000_000
CHANNELS = 8  # separate connections, so SO_REUSEPORT can spread them over processes
# The capped scaling runs use more connections: SO_REUSEPORT places each connection
# on one process for its lifetime, so with 8 an uneven split (say 5/3) would cap the
# closed-loop load at the busier process rather than measure the processes.
SCALING_CHANNELS = 32
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# Distinct profiles the load generator asks for (fewer when there are fewer profiles),
# in two halves: warm runs read the first (read once before the first warm run), cold
# runs the second (its wire caches dropped before each cold run). Each half holds more
# requests than a run sends, so a cold run never reads a profile twice.
REQUEST_POOL = 100_000
POOLS = ("warm", "cold")
# The read every GetProfile makes: all sections, in the wire form (READ_PROFILES_LUA).
WIRE_FLAGS = "aciprtw"


Metadata = tuple[tuple[str, str], ...]


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
    """A bare grpc.aio server (run on uvloop): no interceptors, answers every call
    with fixed bytes.

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


# A traced profile process, as a traced deployment runs minus its collector: the SDK
# tracer provider, installed before the service starts (so the service takes it as its
# own, with the gRPC, Redis and SQLAlchemy instrumentations on), batches every span to
# an exporter that drops them: the cost measured is recording spans, not shipping them.
# Run with `python -c` in the tree under test, so bench/profile_ab.py can compare
# revisions traced.
TRACED_PROFILE = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class DroppingExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
trace.set_tracer_provider(provider)

from services.profile.app import SPEC
from services.shared.server import main

main(SPEC)
"""


def start_profile(
    port: int, database_url: str, redis_url: str, traced: bool = False
) -> subprocess.Popen[bytes]:
    """Start a profile process on `port` (`traced`: TRACED_PROFILE); wait_started() tells
    when it serves."""
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
    command = [sys.executable, "-m", "services.profile"]
    if traced:
        command = [sys.executable, "-c", TRACED_PROFILE]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=handle)
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
    picks = pool(args.profiles, args.pool)
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


def pool(profiles: int, half: str) -> list[int]:
    """The distinct profiles the load generator asks for in `half` ("warm" or "cold")."""
    picks = random.Random(11).sample(range(1, profiles + 1), min(profiles, REQUEST_POOL))
    middle = len(picks) // 2
    return picks[:middle] if half == "warm" else picks[middle:]


async def drop_wire_cache(redis_url: str, ws: str, profiles: int) -> int:
    """Empty the wire caches of the cold half of the pool (as if each had just been written)."""
    redis = redis_asyncio.Redis.from_url(redis_url)
    dropped = 0
    keys = [
        hotstate.profile_key(ws, f"{pid:0{PID_WIDTH}d}", "wire") for pid in pool(profiles, "cold")
    ]
    for first in range(0, len(keys), 10_000):
        dropped += await redis.unlink(*keys[first : first + 10_000])
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
    """Read the warm half of the pool once with GetProfile's script, filling its wire cache."""
    started = time.perf_counter()
    redis = redis_asyncio.Redis.from_url(redis_url)
    script = redis.register_script(READ_PROFILES_LUA)
    prefix = hotstate.workspace_prefix(ws)
    picks = pool(profiles, "warm")
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
    half: str = "warm",
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
        "--pool",
        half,
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


@dataclass(frozen=True)
class Target:
    """One row of the table: what the load generator calls and how."""

    label: str
    load: str  # the load generator's --load
    address: str
    pids: tuple[int, ...]  # the server processes whose CPU is counted
    half: str = "warm"  # which half of the request pool it reads (POOLS)
    modes: tuple[str, ...] = ("rate", "saturate")


def _start_echo(payload: Path, redis_url: str = "") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve-echo", str(port), str(payload)]
    if redis_url:
        command += ["--echo-redis", redis_url]
    process = subprocess.Popen(command, cwd=ROOT)
    address = f"127.0.0.1:{port}"
    asyncio.run(_wait_echo(address))
    return process, address


def _start_serving(
    database_url: str, redis_url: str, traced: bool, request: bytes, metadata: Metadata
) -> tuple[subprocess.Popen[bytes], str, bytes]:
    port = free_port()
    process = start_profile(port, database_url, redis_url, traced)
    address = f"127.0.0.1:{port}"
    return process, address, asyncio.run(wait_ready(address, metadata, request))


def orchestrate(opts: argparse.Namespace) -> None:
    """Seed, start the servers, run every measurement in rounds, clean up, print the table."""
    if opts.redis_url.rsplit("/", 1)[1] in ("0", "13"):
        raise SystemExit("use a Redis db of its own (not 0, not 13): it is flushed")
    asyncio.run(_flush(opts.redis_url))
    database_url, keys = asyncio.run(create_bench_database(opts.pg))
    ws, key = keys["workspace_id"], keys["profile_key"]
    metadata: Metadata = (("authorization", f"Bearer {key}"),)
    rounds: list[dict[tuple[str, str], dict]] = []  # type: ignore[type-arg]
    extra: list[tuple[str, str, dict]] = []  # type: ignore[type-arg]
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
        sample = profile_pb2.GetProfileRequest(
            identifier=common_pb2.Identifier(type="user_id", value=user_value(1))
        ).SerializeToString()
        plain, address, reply = _start_serving(
            database_url, opts.redis_url, False, sample, metadata
        )
        processes.append(plain)
        traced, traced_address, _ = _start_serving(
            database_url, opts.redis_url, True, sample, metadata
        )
        processes.append(traced)
        payload.write_bytes(reply)
        print(f"GetProfile response: {len(reply)} bytes", flush=True)
        echo, echo_address = _start_echo(payload)
        echo_get, echo_get_address = _start_echo(payload, opts.redis_url)
        processes += [echo, echo_get]
        seconds = asyncio.run(warm_wire_cache(opts.redis_url, ws, opts.profiles))
        print(f"read the warm half of the request pool once: {seconds:.1f}s", flush=True)
        targets = [
            Target(ECHO_LABEL, "echo", echo_address, (echo.pid,)),
            Target("echo + 1 Redis GET", "echo", echo_get_address, (echo_get.pid,)),
            Target("GetProfile, tracing off, warm", "profile", address, (plain.pid,)),
            Target("GetProfile, tracing off, cold", "profile", address, (plain.pid,), "cold"),
            Target("GetProfile, tracing on, warm", "profile", traced_address, (traced.pid,)),
            Target(
                "GetProfile, tracing on, cold", "profile", traced_address, (traced.pid,), "cold"
            ),
            Target("redis-py EVALSHA", "redis", "", (), "warm", ("saturate",)),
        ]
        for index in range(opts.rounds):
            # Rotated each round, so a burst of other work lands on different targets.
            shift = index % len(targets)
            results: dict[tuple[str, str], dict] = {}  # type: ignore[type-arg]
            for target in targets[shift:] + targets[:shift]:
                for mode in target.modes:
                    if target.half == "cold":
                        asyncio.run(drop_wire_cache(opts.redis_url, ws, opts.profiles))
                    result = run_load(
                        target.load, mode, target.address, opts, ws, key,
                        list(target.pids), half=target.half,
                    )  # fmt: skip
                    results[target.label, mode] = result
                    print(f"  {index + 1} {target.label:<30} {mode:<9} {result}", flush=True)
            rounds.append(results)
        _stop(processes)
        processes.clear()
        if opts.scaling:
            extra += scaling(opts, database_url, ws, key, groups, 0.0)
        if opts.cap:
            extra += scaling(opts, database_url, ws, key, groups, opts.cap)
    finally:
        _stop(processes)
        for group in groups:
            group.rmdir()  # empty once its process has exited
        payload.unlink(missing_ok=True)
        print(f"Redis memory with the seeded profiles: {asyncio.run(_flush(opts.redis_url))}")
        asyncio.run(drop_bench_database(database_url, opts.pg))
    print_table([t.label for t in targets] if rounds else [], rounds, extra, opts)


def scaling(
    opts: argparse.Namespace, database_url: str, ws: str, key: str, groups: list[Path], cap: float
) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    """Saturation with 1, then 2 profile processes (tracing off) sharing one port through
    SO_REUSEPORT; with `cap`, each capped at that many CPUs, over SCALING_CHANNELS
    connections.

    Each capped process gets a fixed CPU budget, as it would get a core of its own on
    a bigger machine, and the caps leave CPU for the load generator and Redis: whether
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
    channels = SCALING_CHANNELS if cap else CHANNELS
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for count in (1, 2):
            process = start_profile(port, database_url, opts.redis_url)
            processes.append(process)
            wait_started(process)  # started uncapped: the cap is for serving, not importing
            if cap:
                groups.append(cap_cpu(process.pid, cap))
            asyncio.run(wait_ready(address, metadata, sample))
            label = f"GetProfile, {count} process{'es' if count > 1 else ''}"
            label += f" x {cap:g} CPU" if cap else " on one port"
            pids = [p.pid for p in processes]
            result = run_load("profile", "saturate", address, opts, ws, key, pids, channels)
            rows.append((label, "saturate", result))
            print(f"  {label:<30} saturate  {result}", flush=True)
    finally:
        _stop(processes)
    return rows


def print_table(
    labels: list[str],
    rounds: list[dict[tuple[str, str], dict]],  # type: ignore[type-arg]
    extra: list[tuple[str, str, dict]],  # type: ignore[type-arg]
    opts: argparse.Namespace,
) -> None:
    """Per target: the median over the rounds of each figure, ratios taken per round
    (no such table with no rounds); then the scaling runs."""

    def median(label: str, mode: str, field: str) -> float | None:
        values = [r[label, mode][field] for r in rounds if field in r.get((label, mode), {})]
        return statistics.median(values) if values else None

    def ratio(label: str, to: str) -> float:
        return statistics.median(
            r[label, "saturate"]["rps"] / r[to, "saturate"]["rps"] for r in rounds
        )

    def cpu_ratio(label: str) -> str:
        # Calls per CPU-second against the echo's: the throughput ratio each would reach
        # with a core to itself, which other load on the machine moves much less.
        values = [
            r[ECHO_LABEL, "saturate"]["cpu_us"] / r[label, "saturate"]["cpu_us"]
            for r in rounds
            if "cpu_us" in r[label, "saturate"]
        ]
        return f"{statistics.median(values):.2f}x" if values else ""

    def spread(label: str) -> str:
        values = [r[label, "saturate"]["rps"] / r[ECHO_LABEL, "saturate"]["rps"] for r in rounds]
        return f" ({min(values):.2f}-{max(values):.2f}x)" if len(values) > 1 else ""

    def number(value: float | None, digits: int = 0) -> str:
        return "" if value is None else f"{value:,.{digits}f}"

    print()
    print(
        f"profiles={opts.profiles:,} rounds={opts.rounds} duration={opts.duration}s "
        f"rate={opts.rate:.0f}/s concurrency={opts.concurrency} (saturation), "
        f"{os.cpu_count()} cores, load average {opts.load_before:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; medians over the rounds"
    )
    if labels:
        print()
        print(
            f"| target | p50 ms at {opts.rate:.0f}/s | p99 ms at {opts.rate:.0f}/s "
            "| req/s at saturation | vs echo (rounds) | p50 / p99 ms at saturation "
            "| server CPU us/call | calls per CPU-second vs echo | Redis CPU us/call |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label in labels:
            rps = median(label, "saturate", "rps")
            vs = (
                "1.00x"
                if label == ECHO_LABEL
                else f"{ratio(label, ECHO_LABEL):.2f}x{spread(label)}"
            )
            print(
                f"| {label} | {number(median(label, 'rate', 'p50'), 2)} "
                f"| {number(median(label, 'rate', 'p99'), 2)} | {number(rps)} | {vs} "
                f"| {number(median(label, 'saturate', 'p50'), 2)} / "
                f"{number(median(label, 'saturate', 'p99'), 2)} "
                f"| {number(median(label, 'saturate', 'cpu_us'))} | {cpu_ratio(label)} "
                f"| {number(median(label, 'saturate', 'redis_cpu_us'))} |"
            )
        print()
        floor = "echo + 1 Redis GET"
        for label in labels:
            if label.startswith("GetProfile"):
                print(
                    f"{label}: {ratio(label, ECHO_LABEL):.2f}x the echo's req/s "
                    f"({ratio(label, floor):.2f}x the echo + 1 Redis GET's), "
                    f"{cpu_ratio(label)} its calls per CPU-second"
                )
    if extra:
        print()
        print("| target | req/s at saturation | p99 ms | server CPU us/call (split) |")
        print("|---|---:|---:|---:|")
        for label, _, r in extra:
            split = "/".join(f"{share:.0%}" for share in r.get("cpu_split", []))
            print(
                f"| {label} | {r['rps']:,.0f} | {r['p99']:.2f} | {r['cpu_us']:.0f}"
                + (f" ({split})" if len(r.get("cpu_split", [])) > 1 else "")
                + " |"
            )
        for first, second in zip(extra[::2], extra[1::2], strict=False):
            print(f"{second[0]} vs {first[0]}: {second[2]['rps'] / first[2]['rps']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scaling", action="store_true", help="also 1 and 2 processes sharing the port"
    )
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
    parser.add_argument("--pool", choices=POOLS, default="warm")
    opts = parser.parse_args()
    if opts.serve_echo:
        # uvloop, as the services run (services.shared.server.run): like with like.
        uvloop.run(serve_echo(int(opts.serve_echo[0]), opts.serve_echo[1], opts.echo_redis))
    elif opts.load:
        print(json.dumps(asyncio.run(load(opts))))
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
