"""Time as microseconds since the Unix epoch, behind an injectable clock.

Evaluation time `now` must be settable in tests and backtests without mocking inside
the logic, so code that needs the time takes a Clock.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Protocol

import redis

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND


class Clock(Protocol):
    def now_us(self) -> int:
        """Current time in microseconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000


class FixedClock:
    """A clock that stays where it is set (tests, backtests)."""

    def __init__(self, now_us: int) -> None:
        self._now_us = now_us

    def now_us(self) -> int:
        return self._now_us

    def set(self, now_us: int) -> None:
        self._now_us = now_us

    def advance(self, seconds: float) -> None:
        self._now_us += int(seconds * US_PER_SECOND)


class RedisKeyClock:
    """The instant (integer microseconds) held in one Redis key, read on every call;
    the wall clock while the key is absent.

    Only when the CLOCK_REDIS_KEY setting names it (tests and replays of separate
    processes): every process of a run then shares one `now` that a driver sets and
    steps forward. A blocking read per call is fine there and never happens otherwise.
    """

    def __init__(self, redis_url: str, key: str) -> None:
        # REDIS_CLUSTER as services.shared.redis.cluster_mode reads it (not imported:
        # that module loads the embedded store, which nothing needing a clock should).
        cluster = os.environ.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes")
        self._redis = (
            redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
        )
        self._key = key

    def now_us(self) -> int:
        value = self._redis.get(self._key)
        return int(value) if value is not None else time.time_ns() // 1000


def clock_for(redis_url: str, clock_redis_key: str) -> Clock:
    """The process clock: the wall clock, or `RedisKeyClock` when a key is configured."""
    if not clock_redis_key:
        return SystemClock()
    if redis_url.startswith("memory"):
        raise ValueError("CLOCK_REDIS_KEY needs a real Redis (REDIS_URL=redis://...)")
    return RedisKeyClock(redis_url, clock_redis_key)


def us_from_datetime(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def datetime_from_us(value_us: int) -> datetime:
    """Aware UTC datetime from microseconds since the epoch."""
    return datetime.fromtimestamp(value_us / US_PER_SECOND, tz=UTC)


def parse_iso_us(text: str) -> int:
    """Microseconds since the epoch from an ISO-8601 instant ('Z' or an offset)."""
    return us_from_datetime(datetime.fromisoformat(text.replace("Z", "+00:00")))
