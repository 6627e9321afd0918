"""Segmentation's share of the hot profile state in Redis (services/shared/hotstate.py):
each profile's ``audiences`` hash (audience key -> entered_at_us) and ``computed`` hash
(computed trait key -> JSON value), read by the profile service.

Every batch of changes goes out as pipelines of at most PIPELINE_COMMANDS commands: one
round trip per batch for the usual sizes, never a round trip per profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from redis.asyncio import Redis

from services.shared.hotstate import profile_key

# Commands per pipeline: keeps a million-profile backfill from building one huge reply.
PIPELINE_COMMANDS = 10_000


class HotState:
    """Writes membership and computed-value changes to the profiles' hot state."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def _run(self, commands: list[tuple[str, tuple[Any, ...]]]) -> None:
        for start in range(0, len(commands), PIPELINE_COMMANDS):
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, args in commands[start : start + PIPELINE_COMMANDS]:
                    getattr(pipe, name)(*args)
                await pipe.execute()

    async def memberships(
        self,
        ws: str,
        audience_key: str,
        entered: Mapping[int, int],
        exited: Iterable[int],
    ) -> None:
        """Add `entered` (profile -> entered_at_us) and remove `exited` from the
        profiles' audiences hashes."""
        commands: list[tuple[str, tuple[Any, ...]]] = [
            ("hset", (profile_key(ws, p, "audiences"), audience_key, str(at)))
            for p, at in entered.items()
        ]
        commands += [("hdel", (profile_key(ws, p, "audiences"), audience_key)) for p in exited]
        await self._run(commands)

    async def computed(
        self, ws: str, key: str, changed: Mapping[int, Any], removed: Iterable[int]
    ) -> None:
        """Set the changed values (a null value is removed: absent means no value)."""
        commands: list[tuple[str, tuple[Any, ...]]] = []
        for p, value in changed.items():
            if value is None:
                commands.append(("hdel", (profile_key(ws, p, "computed"), key)))
            else:
                commands.append(
                    ("hset", (profile_key(ws, p, "computed"), key, orjson.dumps(value)))
                )
        commands += [("hdel", (profile_key(ws, p, "computed"), key)) for p in removed]
        await self._run(commands)
