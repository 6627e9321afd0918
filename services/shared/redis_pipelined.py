"""One Redis connection shared by many concurrent callers, for a service's hottest command.

Why it exists: at saturation a GetProfile is one EVALSHA, and through redis-py that
round trip cost the server ~170 us of CPU per call (pool acquire/release, command
machinery, a coroutine per reply, one socket read per reply), a third of what a bare
gRPC echo costs per call; the same command on one pipelined connection cost ~50 us,
because many replies arrive in one read (docs/benchmarks.md, "Profile").

Callers write their packed command (hiredis packs it) onto the one connection and get
a future (the commands written in one pass of the event loop go out in one send); the
protocol's data callback feeds the bytes to a hiredis reader and resolves the futures
in FIFO order, which is the order Redis answers a connection's commands in. There is
no pool, no reader task and no per-reply coroutine.

- A caller cancelled while waiting leaves its future in the queue: its reply is still
  read and dropped, so later callers get their own replies.
- An error reply fails only its own caller (as redis-py's ResponseError or
  NoScriptError); the connection stays in step.
- Connection loss fails every caller in flight with redis-py's ConnectionError; the
  next call connects again. Nothing is retried here: a command may have run.
- A reply that has not come within REPLY_TIMEOUT_SECONDS of its command being written
  means Redis or the network is stuck, and since replies come in order, every reply
  behind it is stuck too: the connection is dropped, every caller in flight gets
  redis-py's TimeoutError, and the next call connects again. One timer per
  connection checks the oldest command; nothing is added per call but a clock read.
  (So a blocking command does not belong on this connection.)
- There is no write back-pressure: callers bound their number (the server's
  concurrency) and their own wait (gRPC deadlines).

While tracing records (the caller runs inside a recording span, e.g. a traced
request), each command gets a Redis client span of its own, as redis-py's
instrumentation gives every other command; otherwise nothing is added per call but a
check of the current span.

Only plain TCP `redis://` URLs are served this way (AUTH and SELECT from the URL);
anything else (rediss://, unix://, and any URL on a Redis Cluster, where the command
must go to the node of its key's slot and follow redirects) gets None from
`create_pipelined`, and the caller keeps using redis-py, which everything but the hot
command uses anyway.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, cast

import hiredis
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.shared.redis import cluster_mode

# hiredis's stub types the argument as a 1-tuple; it packs a command of any length.
_pack_command = cast(
    "Callable[[tuple[str | bytes | int | float, ...]], bytes]", hiredis.pack_command
)

CONNECT_TIMEOUT_SECONDS = 5.0
REPLY_TIMEOUT_SECONDS = 5.0

_tracer = trace.get_tracer(__name__)


class _Protocol(asyncio.Protocol):
    """The connection: a hiredis reader and the futures waiting for replies, in order."""

    def __init__(self, reply_timeout: float = REPLY_TIMEOUT_SECONDS) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        # When each waiting command was written (loop time), in the same order.
        self._written_at: collections.deque[float] = collections.deque()
        self._reply_timeout = reply_timeout
        self._watchdog: asyncio.TimerHandle | None = None
        # Commands written since the last flush: sent together once the callers of
        # this event-loop pass have all written (see call).
        self._unsent: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.lost: RedisConnectionError | None = None

    @property
    def usable(self) -> bool:
        """True while commands can be written (connected, not lost, not closing)."""
        transport = self._transport
        return self.lost is None and transport is not None and not transport.is_closing()

    @property
    def in_flight(self) -> int:
        """Commands written whose replies have not been read yet."""
        return len(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport; asyncio's signature names the base class.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future = self._waiting.popleft()
                self._written_at.popleft()
                if future.done():  # its caller was cancelled: drop the reply
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_reply_error(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as error:
            # Bytes that are not RESP, or a reply nobody asked for: out of step for good.
            self._fail(RedisConnectionError(f"Redis connection out of step: {error!r}"))
            assert self._transport is not None
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.usable:
            reason = self.lost.args if self.lost is not None else ("Redis connection closed",)
            future.set_exception(RedisConnectionError(*reason))
            return future
        loop = asyncio.get_running_loop()
        self._waiting.append(future)
        self._written_at.append(loop.time())
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._reply_timeout, self._check_replies)
        # Sent at the end of this pass of the event loop, with every other command
        # written in it: one send for the server and one read for Redis instead of
        # one each per command, and Redis answers them with one write.
        if not self._unsent:
            loop.call_soon(self._flush)
        self._unsent.append(packed)
        return future

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        # Lost meanwhile: connection_lost has failed their futures already.
        if self.usable:
            assert self._transport is not None
            self._transport.write(b"".join(unsent))

    def _check_replies(self) -> None:
        """The watchdog: drop the connection if the oldest reply is overdue, else wait
        until it would be (no timer while nothing is waiting)."""
        self._watchdog = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        overdue_at = self._written_at[0] + self._reply_timeout
        if loop.time() < overdue_at:
            self._watchdog = loop.call_at(overdue_at, self._check_replies)
            return
        self._fail(RedisTimeoutError(f"no reply from Redis in {self._reply_timeout:g}s"))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: RedisConnectionError | RedisTimeoutError) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError(*error.args)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._written_at.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                # An exception object each: one raised in many tasks shares a traceback.
                future.set_exception(type(error)(*error.args))


def _reply_error(message: str) -> ResponseError:
    """redis-py's exception for an error reply (NOSCRIPT gets its own class)."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class PipelinedConnection:
    """Commands from concurrent callers pipelined on one connection, replies in FIFO order."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int,
        username: str | None,
        password: str | None,
        reply_timeout: float = REPLY_TIMEOUT_SECONDS,
    ) -> None:
        """Nothing connects yet: the first `execute` does (AUTH and SELECT as given)."""
        self._address = (host, port)
        self._reply_timeout = reply_timeout
        self._span_attributes: dict[str, str | int] = {
            "db.system": "redis",
            "db.redis.database_index": db,
            "net.peer.name": host,
            "net.peer.port": port,
            "net.transport": "ip_tcp",
        }
        self._handshake: list[bytes] = []
        if password:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._handshake.append(_pack_command(auth))
        if db:
            self._handshake.append(_pack_command(("SELECT", db)))
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command and return its reply (bytes, never decoded).

        Raises redis-py's ResponseError/NoScriptError for an error reply, its
        ConnectionError when the connection cannot be made or is lost meanwhile, and
        its TimeoutError when the reply is overdue (see the module's docstring).
        """
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._connect()
        packed = _pack_command(args)
        if not trace.get_current_span().is_recording():
            return await protocol.call(packed)
        # A span per command, named and described as redis-py's instrumentation does
        # (the command's name, not its arguments: they hold identifiers).
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        with _tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes={**self._span_attributes, "db.statement": name}
        ):
            return await protocol.call(packed)

    async def _connect(self) -> _Protocol:
        async with self._connecting:  # one connect at a time; the rest find it made
            if self._protocol is not None and self._protocol.usable:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self._reply_timeout), *self._address
                    )
                    try:
                        for packed in self._handshake:
                            await protocol.call(packed)
                    except BaseException:
                        protocol.close()
                        raise
            except (OSError, TimeoutError) as error:
                raise RedisConnectionError(f"cannot connect to Redis: {error!r}") from error
            self._protocol = protocol
            return protocol

    @property
    def in_flight(self) -> int:
        """Commands written on the current connection and not answered yet."""
        return self._protocol.in_flight if self._protocol is not None else 0

    def close(self) -> None:
        """Close the connection (callers in flight get ConnectionError)."""
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


def create_pipelined(
    url: str, reply_timeout: float = REPLY_TIMEOUT_SECONDS
) -> PipelinedConnection | None:
    """A pipelined connection for a plain redis:// URL; None for anything else (and on a
    Redis Cluster, REDIS_CLUSTER)."""
    if not url.startswith("redis://") or cluster_mode():
        return None
    kwargs = ConnectionPool.from_url(url).connection_kwargs  # redis-py's URL parsing
    return PipelinedConnection(
        kwargs.get("host", "localhost"),
        int(kwargs.get("port", 6379)),
        int(kwargs.get("db", 0)),
        kwargs.get("username"),
        kwargs.get("password"),
        reply_timeout,
    )
