"""A/B of GetProfile's server CPU per call between git revisions, and echo variants.

    .venv/bin/python bench/profile_ab.py REV [REV ...] [--rounds 4] [--duration 3] [--traced]
    .venv/bin/python bench/profile_ab.py --echo [--rounds 3]

On a shared machine throughput moves with everyone's load, so this interleaves the
candidates (A, B, A, B, ...) and reports, per round, the saturation throughput and the
CPU the server process spent per call (bench/profile_load.py's loader and /proc
accounting), with the bare grpc.aio echo server answering with the same bytes run in
every round as the transport baseline, on uvloop like the service (ratios are to the
same round's echo). Each
revision is exported with `git archive` into a temporary directory and its profile
process started from there (5,000 seeded profiles in Redis db 12, flushed afterwards;
one bench database, dropped afterwards). With `--traced` the profile processes run
traced (bench/profile_load.py's TRACED_PROFILE: the SDK with a dropping exporter).

`--echo` instead compares bare grpc.aio echo servers whose handler returns at once
(on asyncio's default loop, or on uvloop, as the services and bench/profile_load.py's
echo run), awaits one redis-py GET, or awaits one GET on a raw pipelined connection (an asyncio
Protocol and a hiredis reader): what one Redis round trip costs the server, by client.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
import profile_load as bench  # noqa: E402

ECHO_MODES = ("return", "return, uvloop", "redis-py GET", "raw GET")
# In the revisions' comparison, the bare echo server answering with the same bytes
# runs in every round too, so each round's throughput has its own transport limit.
ECHO_BASELINE = "echo (bare grpc.aio)"
# One candidate's round: req/s, server CPU us per call, Redis CPU us per call, p50 and
# p99 ms.
Cell = tuple[int, int, int | None, float, float]


def _cell(r: dict) -> Cell:  # type: ignore[type-arg]
    redis_cpu = r.get("redis_cpu_us")
    return (
        round(r["rps"]),
        round(r["cpu_us"]),
        None if redis_cpu is None else round(redis_cpu),
        r["p50"],
        r["p99"],
    )


def serve_echo_variant(port: int, mode: str, redis_url: str) -> None:
    """A bare echo server whose handler does `mode` before answering."""
    import hiredis
    import redis.asyncio as redis_asyncio

    class RawRedis(asyncio.Protocol):
        """Replies in order on one connection: a future per command."""

        def __init__(self) -> None:
            self.reader = hiredis.Reader()
            self.waiting: collections.deque[asyncio.Future[object]] = collections.deque()
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                self.waiting.popleft().set_result(reply)

        def call(self, packed: bytes) -> asyncio.Future[object]:
            future = asyncio.get_running_loop().create_future()
            self.waiting.append(future)
            assert self.transport is not None
            self.transport.write(packed)
            return future

    async def main() -> None:
        host, redis_port, db = bench._redis_parts(redis_url)
        client = redis_asyncio.Redis.from_url(redis_url)
        _, raw = await asyncio.get_running_loop().create_connection(RawRedis, host, int(redis_port))
        await raw.call(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(db), db.encode()))
        get = b"*2\r\n$3\r\nGET\r\n$7\r\nnothing\r\n"
        payload = b"x" * 984

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if mode == "redis-py GET":
                await client.get("nothing")
            elif mode == "raw GET":
                await raw.call(get)
            return payload

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo",
            {
                "Get": grpc.unary_unary_rpc_method_handler(
                    handle,
                    request_deserializer=bench._identity,
                    response_serializer=bench._identity,
                )
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if mode.endswith("uvloop"):
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def compare_echo(opts: argparse.Namespace) -> dict[str, list[Cell]]:
    results: dict[str, list[Cell]] = {mode: [] for mode in ECHO_MODES}
    for _ in range(opts.rounds):
        for mode in ECHO_MODES:
            port = bench.free_port()
            command = [sys.executable, __file__, "--serve", str(port), mode, opts.redis_url]
            server = subprocess.Popen(command)
            try:
                asyncio.run(bench._wait_echo(f"127.0.0.1:{port}"))
                r = bench.run_load(
                    "echo", opts.mode, f"127.0.0.1:{port}", opts, "", "", [server.pid]
                )
                results[mode].append(_cell(r))
            finally:
                bench._stop([server])
    return results


def _echo_round(opts: argparse.Namespace, payload: Path) -> Cell:
    """One saturation run of the bare echo server answering with `payload`."""
    port = bench.free_port()
    command = [sys.executable, bench.__file__, "--serve-echo", str(port), str(payload)]
    server = subprocess.Popen(command)
    try:
        asyncio.run(bench._wait_echo(f"127.0.0.1:{port}"))
        r = bench.run_load("echo", opts.mode, f"127.0.0.1:{port}", opts, "", "", [server.pid])
        return _cell(r)
    finally:
        bench._stop([server])


def compare_revisions(opts: argparse.Namespace) -> dict[str, list[Cell]]:
    root = bench.ROOT
    results: dict[str, list[Cell]] = {rev: [] for rev in opts.revisions}
    asyncio.run(bench._flush(opts.redis_url))
    database_url, keys = asyncio.run(bench.create_bench_database(opts.pg))
    ws, key = keys["workspace_id"], keys["profile_key"]
    metadata = (("authorization", f"Bearer {key}"),)
    sample = bench.profile_pb2.GetProfileRequest(
        identifier=bench.common_pb2.Identifier(type="user_id", value=bench.user_value(1))
    ).SerializeToString()
    with tempfile.TemporaryDirectory(prefix="profile_ab_") as scratch:
        trees = {}
        for rev in opts.revisions:
            tree = Path(scratch) / rev.replace("/", "_")
            tree.mkdir()
            archive = subprocess.run(
                ["git", "archive", rev], cwd=root, check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            trees[rev] = tree
        handle, payload_name = tempfile.mkstemp(prefix="profile_ab_payload_", suffix=".bin")
        os.close(handle)
        payload = Path(payload_name)
        try:
            bench.seed(opts.redis_url, ws, opts.profiles)
            for _ in range(opts.rounds):
                if payload.stat().st_size:
                    results.setdefault(ECHO_BASELINE, []).append(_echo_round(opts, payload))
                for rev, tree in trees.items():
                    port = bench.free_port()
                    bench.ROOT = tree  # start_profile runs the service from this tree
                    server = bench.start_profile(port, database_url, opts.redis_url, opts.traced)
                    try:
                        reply = asyncio.run(bench.wait_ready(f"127.0.0.1:{port}", metadata, sample))
                        if not payload.stat().st_size:
                            payload.write_bytes(reply)  # the echo answers with these bytes
                            results.setdefault(ECHO_BASELINE, []).append(_echo_round(opts, payload))
                        r = bench.run_load(
                            "profile", opts.mode, f"127.0.0.1:{port}", opts, ws, key, [server.pid]
                        )
                        results[rev].append(_cell(r))
                    finally:
                        bench._stop([server])
        finally:
            payload.unlink(missing_ok=True)
            bench.ROOT = root
            asyncio.run(bench._flush(opts.redis_url))
            asyncio.run(bench.drop_bench_database(database_url, opts.pg))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("revisions", nargs="*")
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--traced", action="store_true", help="run the profile processes traced")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--mode",
        choices=["saturate", "rate"],
        default="saturate",
        help="saturation (default) or a fixed offered rate (--rate), reporting p99 too",
    )
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--profiles", type=int, default=5_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "MODE", "REDIS_URL"))
    opts = parser.parse_args()
    opts.channels = bench.CHANNELS
    if opts.serve:
        serve_echo_variant(int(opts.serve[0]), opts.serve[1], opts.serve[2])
        return
    if opts.echo:
        results = compare_echo(opts)
    elif opts.revisions:
        results = compare_revisions(opts)
    else:
        parser.error("give git revisions to compare, or --echo")
    print("| candidate | " + " | ".join(f"round {i + 1}" for i in range(opts.rounds)) + " |")
    print("|---|" + "---:|" * opts.rounds)
    echo = results.get(ECHO_BASELINE)
    for name, rounds in results.items():
        cells = " | ".join(
            f"{rps:,}/s{_vs_echo(rps, echo, i)}, {cpu}{_redis(redis_cpu)} us"
            + (f", p50 {p50:.2f} p99 {p99:.2f} ms" if opts.mode == "rate" else "")
            for i, (rps, cpu, redis_cpu, p50, p99) in enumerate(rounds)
        )
        print(f"| {name} | {cells} |")
    print(
        f"\n(each cell, {opts.mode}: req/s [x the same round's echo], server CPU per call"
        " [+ Redis CPU per call][, p50 and p99 at the fixed rate])"
    )


def _redis(cpu: int | None) -> str:
    return "" if cpu is None else f" + {cpu}"


def _vs_echo(rps: int, echo: list[Cell] | None, index: int) -> str:
    if not echo or index >= len(echo):
        return ""
    return f" ({rps / echo[index][0]:.2f}x)"


if __name__ == "__main__":
    main()
