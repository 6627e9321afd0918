"""Pure rules of delivery: Retry-After parsing and the backoff's bounds."""

from __future__ import annotations

import email.utils

import pytest

from services.sync.delivery import RetryPolicy, TokenBucket, retry_after_seconds

pytestmark = pytest.mark.unit


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0 ") == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(date, now=now) == pytest.approx(30)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-3", "1.5.2"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert retry_after_seconds(value) is None


def test_backoff_is_jittered_below_an_exponential_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_seconds=0.5, max_seconds=10, max_attempts=8)
    for attempt in range(8):
        waits = [policy.backoff(attempt, None) for _ in range(200)]
        assert all(0 <= w <= min(10, 0.5 * 2**attempt) for w in waits)
        assert len(set(waits)) > 1  # jittered, not one fixed delay
    assert policy.backoff(3, 4.0) == 4.0


async def test_the_token_bucket_holds_the_rate_after_a_burst() -> None:
    clock = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(4, now=lambda: clock[0], sleep=sleep)
    for _ in range(12):
        await bucket.take()
    # A burst of 4 goes at once; the next 8 need 8 / 4 = 2 seconds.
    assert clock[0] == pytest.approx(2.0)
    assert len(waits) == 8
