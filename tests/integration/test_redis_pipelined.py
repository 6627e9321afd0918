"""The pipelined Redis connection against a real Redis: concurrent callers get their
own replies, the commands of one event-loop pass go out in one send, cancelled callers
and error replies leave it in step, a killed connection or an overdue reply fails the
callers in flight and the next call reconnects."""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.shared.redis_pipelined import PipelinedConnection, create_pipelined

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def pipelined(redis_url: str) -> AsyncIterator[PipelinedConnection]:
    connection = create_pipelined(redis_url)
    assert connection is not None
    yield connection
    connection.close()


async def started(pipelined: PipelinedConnection, command: tuple, in_flight: int) -> asyncio.Future:  # type: ignore[type-arg]
    """`command` as a task that has written it: on a connected connection `execute`
    writes in its first step, which runs before this coroutine resumes from one yield."""
    task = asyncio.ensure_future(pipelined.execute(*command))
    await asyncio.sleep(0)
    assert pipelined.in_flight == in_flight
    return task


async def test_tls_and_unix_urls_get_no_pipelined_connection() -> None:
    assert create_pipelined("unix:///tmp/redis.sock") is None
    assert create_pipelined("rediss://127.0.0.1:6380/0") is None


async def test_concurrent_callers_get_their_own_replies(pipelined, redis) -> None:  # type: ignore[no-untyped-def]
    values = {f"k-{n}": f"v-{n}-{uuid.uuid4()}" for n in range(500)}
    await redis.mset(values)
    keys = list(values) * 3
    random.shuffle(keys)
    replies = await asyncio.gather(*(pipelined.execute("GET", key) for key in keys))
    assert replies == [values[key].encode() for key in keys]
    # The database of the URL was selected: the keys were found there, not in db 0.
    assert await pipelined.execute("DBSIZE") == len(values)


async def test_commands_written_in_one_pass_reach_redis_in_one_send(redis_url: str) -> None:
    # A relay process in front of Redis counts what this connection sends, so other
    # clients of a shared Redis cannot move the count (Redis's global stats could).
    host, port = redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.relay", host, port, stdout=asyncio.subprocess.PIPE
    )
    assert relay.stdout is not None
    relay_port = int(await relay.stdout.readline())
    database = redis_url.rsplit("/", 1)[1]
    connection = create_pipelined(f"redis://127.0.0.1:{relay_port}/{database}")
    assert connection is not None
    try:
        await connection.execute("PING")  # connected (and SELECTed) before counting
        replies = await asyncio.gather(*(connection.execute("ECHO", f"m-{n}") for n in range(100)))
        assert replies == [f"m-{n}".encode() for n in range(100)]
    finally:
        connection.close()
        relay.terminate()
    chunks = [int(line) for line in (await relay.stdout.read()).split()]
    await relay.wait()
    # Every chunk before the ECHOs was the connection's set-up; the 100 commands went in
    # one send, which the relay read at once (written one by one: dozens of chunks).
    echo_bytes = sum(len(f"*2\r\n$4\r\nECHO\r\n${len(f'm-{n}')}\r\nm-{n}\r\n") for n in range(100))
    assert chunks[-1] == echo_bytes, chunks


async def test_an_error_reply_fails_only_its_own_caller(pipelined, redis) -> None:  # type: ignore[no-untyped-def]
    await redis.set("word", "hello")
    calls = [
        pipelined.execute("GET", "word"),
        pipelined.execute("INCR", "word"),
        pipelined.execute("EVALSHA", "0" * 40, 0),
        pipelined.execute("GET", "word"),
    ]
    first, incr, evalsha, last = await asyncio.gather(*calls, return_exceptions=True)
    assert first == last == b"hello"
    assert isinstance(incr, ResponseError) and "not an integer" in str(incr)
    assert isinstance(evalsha, NoScriptError)


async def test_a_cancelled_caller_does_not_shift_later_replies(pipelined, redis) -> None:  # type: ignore[no-untyped-def]
    queue = f"q-{uuid.uuid4()}"
    await redis.set("a", "A")
    # BLPOP holds the connection's reply stream until something is pushed.
    assert await pipelined.execute("PING") == b"PONG"
    blocked = await started(pipelined, ("BLPOP", queue, 10), 1)
    blocked.cancel()
    after = await started(pipelined, ("GET", "a"), 2)
    await redis.lpush(queue, "popped-by-the-cancelled-caller")
    # The BLPOP reply is read and dropped; GET gets its own reply, not the BLPOP's.
    assert await after == b"A"
    assert blocked.cancelled()
    assert await redis.llen(queue) == 0
    # Many cancellations in a storm of calls: the survivors still match.
    await redis.mset({f"s-{n}": str(n) for n in range(300)})
    tasks = [asyncio.ensure_future(pipelined.execute("GET", f"s-{n}")) for n in range(300)]
    for task in tasks[::3]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for n, reply in enumerate(done):
        assert isinstance(reply, asyncio.CancelledError) if n % 3 == 0 else reply == str(n).encode()
    assert await pipelined.execute("GET", "a") == b"A"


async def test_a_killed_connection_fails_callers_in_flight_and_the_next_call_reconnects(  # type: ignore[no-untyped-def]
    pipelined, redis
) -> None:
    await redis.set("a", "A")
    client_id = await pipelined.execute("CLIENT", "ID")
    in_flight = [
        await started(pipelined, ("BLPOP", f"q-{uuid.uuid4()}", 10), 1),
        await started(pipelined, ("GET", "a"), 2),
    ]
    assert await redis.client_kill_filter(_id=client_id) == 1
    for call in in_flight:
        with pytest.raises(RedisConnectionError):
            await call
    assert await pipelined.execute("GET", "a") == b"A"
    assert await pipelined.execute("CLIENT", "ID") != client_id


async def test_an_overdue_reply_fails_the_callers_in_flight_and_the_next_call_reconnects(  # type: ignore[no-untyped-def]
    redis_url, redis
) -> None:
    pipelined = create_pipelined(redis_url, reply_timeout=0.3)
    assert pipelined is not None
    await redis.set("a", "A")
    await pipelined.execute("PING")
    # Redis stops answering every client but this one for a while, as a stuck Redis would.
    await redis.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    try:
        calls = [asyncio.ensure_future(pipelined.execute("GET", "a")) for _ in range(3)]
        started_at = asyncio.get_running_loop().time()
        for call in calls:
            with pytest.raises(RedisTimeoutError):
                await call
        waited = asyncio.get_running_loop().time() - started_at
        assert 0.25 <= waited < 2.5  # the reply timeout, not the pause
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    assert await pipelined.execute("GET", "a") == b"A"
    pipelined.close()


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    connection = create_pipelined("redis://127.0.0.1:1/0")
    assert connection is not None
    with pytest.raises(RedisConnectionError):
        await connection.execute("PING")
