"""The opt-in shared clock (CLOCK_REDIS_KEY): every call reads the instant held in the
Redis key, the wall clock while the key is absent; the wall clock when not configured."""

from __future__ import annotations

import time

import pytest
import redis

from services.shared.clock import RedisKeyClock, SystemClock, clock_for

pytestmark = pytest.mark.integration


def test_the_key_sets_now_for_every_reader(redis_url: str) -> None:
    setter = redis.Redis.from_url(redis_url)
    clock = clock_for(redis_url, "test:clock")
    assert isinstance(clock, RedisKeyClock)
    before = time.time_ns() // 1000
    assert before <= clock.now_us() <= time.time_ns() // 1000  # absent: the wall clock
    setter.set("test:clock", 1_767_225_600_000_000)
    assert clock.now_us() == 1_767_225_600_000_000
    setter.set("test:clock", 1_767_225_600_000_001)
    assert clock.now_us() == 1_767_225_600_000_001
    setter.close()


def test_without_a_key_the_wall_clock_and_no_key_on_the_embedded_store(redis_url: str) -> None:
    assert isinstance(clock_for(redis_url, ""), SystemClock)
    with pytest.raises(ValueError, match="real Redis"):
        clock_for("memory://", "test:clock")
