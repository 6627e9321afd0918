"""The prediction service's share of the hot profile state (services/shared/hotstate.py):
each profile's ``predictions`` hash, prediction key -> JSON ``{probability, percentile,
scored_at_us, top_features}``, which the profile service returns from GetProfile.

Writes go out pipelined, CHUNK profiles per round trip; each write also drops the
profile's ``wire`` cache (a cached encoding never outlives what it encodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
from redis.asyncio import Redis

from services.shared.hotstate import profile_key
from services.shared.streams import RESCORED_MAXLEN, RESCORED_STREAM, publish

CHUNK = 5_000


class PredictionHotState:
    """Writes and removes prediction scores in the profiles' hot state."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def announce_rescored(self, ws: str, key: str) -> None:
        """Tell segmentation that the scores of `key` were replaced, so audiences with a
        condition on it are recomputed (their entered/exited changes logged) at once."""
        await publish(
            self._redis,
            RESCORED_STREAM,
            [(None, {"workspace": ws, "key": key})],
            maxlen=RESCORED_MAXLEN,
        )

    async def write(
        self,
        ws: str,
        key: str,
        profile_ids: Sequence[int],
        probability: Sequence[float],
        percentile: Sequence[float],
        reasons: Sequence[Sequence[str]],
        scored_at_us: int,
    ) -> None:
        """Set each profile's score of prediction `key`."""
        for start in range(0, len(profile_ids), CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            end = start + CHUNK
            for pid, p, q, why in zip(
                profile_ids[start:end],
                probability[start:end],
                percentile[start:end],
                reasons[start:end],
                strict=True,
            ):
                value = orjson.dumps(
                    {
                        "probability": p,
                        "percentile": q,
                        "scored_at_us": scored_at_us,
                        "top_features": list(why),
                    }
                )
                pipe.hset(profile_key(ws, pid, "predictions"), key, value)
                pipe.delete(profile_key(ws, pid, "wire"))
            await pipe.execute()

    async def remove(self, ws: str, key: str, profile_ids: Iterable[int]) -> None:
        """Remove prediction `key` from these profiles' hot state."""
        pids = list(profile_ids)
        for start in range(0, len(pids), CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for pid in pids[start : start + CHUNK]:
                pipe.hdel(profile_key(ws, pid, "predictions"), key)
                pipe.delete(profile_key(ws, pid, "wire"))
            await pipe.execute()
