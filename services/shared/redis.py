"""The Redis client factory, and the embedded Redis-compatible store `make run` serves.

Every process talks to Redis through redis-py over TCP, the embedded default too: the
dev runner serves an in-memory Redis-compatible store (fakeredis, with Lua) on a
loopback port, so all the services of a run, a `--processes` run and the operator
commands (`python -m services.<name> rebuild-hot-state`) read and write one store, and
`make run` still needs nothing installed. Every test of the production path uses a real Redis.

With REDIS_CLUSTER=1 the URL names one node of a Redis Cluster (any node: the client
learns the others and the slot map from it, and follows MOVED/ASK redirects); every
multi-key call of the services keeps its keys on one slot by hash tags
(docs/scaling.md, "Redis Cluster").
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import fakeredis
import redis.asyncio as redis_asyncio
from fakeredis._clients._tcp_server import TCPFakeRequestHandler
from fakeredis.commands_mixins.streams_mixin import StreamsCommandsMixin
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


def cluster_mode() -> bool:
    """True when REDIS_CLUSTER says REDIS_URL is a node of a Redis Cluster."""
    return os.environ.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes")


def create_redis(url: str, cluster: bool | None = None) -> redis_asyncio.Redis:
    """A redis-py asyncio client (hiredis parser when installed) for `url`: a
    `RedisCluster` when `cluster` (default: `cluster_mode()`).

    The cluster client is typed as the single-node one: the services call only commands
    both serve alike (the one-slot rule aside, which the key layout keeps), and the few
    places that differ test `is_cluster`."""
    if cluster_mode() if cluster is None else cluster:
        client = RedisCluster.from_url(url, max_connections=256)
        return client  # type: ignore[return-value]
    return redis_asyncio.Redis.from_url(url, max_connections=256)


def is_cluster(redis: object) -> bool:
    """True for a Redis Cluster client (`create_redis` under REDIS_CLUSTER)."""
    return isinstance(redis, RedisCluster)


def _xreadgroup_blocks_until_new_entries() -> None:
    """Make the embedded store's XREADGROUP ... BLOCK wait as Redis does.

    fakeredis 2.40 reads an empty batch as "found" (an empty dict, not None), so a
    blocking read with COUNT answers at once: every stream consumer of `make run` (the
    realtime worker, the sync runners, the rescoring consumer) then spun a core on empty
    reads and starved the drain on SIGTERM. An empty result now means "nothing yet",
    which fakeredis's blocking loop waits on; a read without BLOCK answers nil, as
    Redis does.
    """
    read = StreamsCommandsMixin._xreadgroup

    def xreadgroup(self: StreamsCommandsMixin, *args: Any) -> Any:
        return read(self, *args) or None

    StreamsCommandsMixin._xreadgroup = xreadgroup  # type: ignore[method-assign,assignment]


_xreadgroup_blocks_until_new_entries()


class _RequestHandler(TCPFakeRequestHandler):
    """fakeredis's TCP connection handler, except that an error reply is sent as a reply.

    fakeredis 2.40's handler closes the connection after any error reply, where Redis
    answers and carries on; redis-py's scripts rely on that (EVALSHA answers NOSCRIPT
    until the script is loaded), and so does creating a consumer group that exists.
    """

    def setup(self) -> None:
        super().setup()
        client = self.current_client
        read_reply = client.read_response

        def read_response(**kwargs: Any) -> Any:
            try:
                return read_reply(**kwargs)
            except ResponseError as error:
                return error  # written as an error reply by the handler

        client.read_response = read_response  # type: ignore[method-assign]


class EmbeddedRedis:
    """The embedded store served on `address` (host:port) from a background thread.

    Its contents live in this process's memory: they go when it stops, and the dev
    runner rebuilds the hot state from the database at every start
    (services/shared/rebuild.py). Streams start empty; ingest's catch-up republishes
    from its durable cursor.
    """

    def __init__(self, address: str) -> None:
        """Bind `address` (port 0 picks a free port); `start` begins serving."""
        host, port = address.rsplit(":", 1)
        self._server = fakeredis.TcpFakeServer((host, int(port)), bind_and_activate=False)
        self._server.RequestHandlerClass = _RequestHandler
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-redis", daemon=True
        )

    @property
    def url(self) -> str:
        """The redis:// URL clients dial (database 0)."""
        host, port = self._server.server_address[:2]
        return f"redis://{host!s}:{port}/0"

    def start(self) -> EmbeddedRedis:
        """Serve connections until `close`."""
        self._thread.start()
        log.info("embedded Redis-compatible store serving on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and drop the contents (clients should be closed first)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
