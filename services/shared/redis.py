"""The Redis client factory: real redis-py asyncio for redis://, in-process for memory://.

The in-process store (fakeredis, with Lua) exists so `make run` needs nothing
installed; every test of the production path uses a real Redis.
"""

from __future__ import annotations

import fakeredis
import redis.asyncio as redis_asyncio

# One in-process server per memory:// URL, so services in one process share state.
_MEMORY_SERVERS: dict[str, fakeredis.FakeServer] = {}


def create_redis(url: str) -> redis_asyncio.Redis:
    """A redis-py asyncio client (hiredis parser when installed) for `url`."""
    if url.startswith("memory://"):
        server = _MEMORY_SERVERS.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(server=server)
    return redis_asyncio.Redis.from_url(url, max_connections=256)
