"""Delivering one HTTP request the way every HTTP destination wants it delivered:
429, 5xx, timeouts and connection errors are retried with exponential backoff and full
jitter, honouring Retry-After; any other 4xx is a refusal the caller dead-letters; a
token bucket keeps the destination's request rate.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

RESPONSE_KEPT_CHARS = 2_000


class DeliveryFailed(Exception):
    """The destination did not acknowledge a batch within the retry policy: the run
    stops and the sync's cursor stays before the batch."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of retried requests."""

    base_seconds: float
    max_seconds: float
    max_attempts: int

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`: what Retry-After asked for, or
        a uniformly jittered wait up to base * 2**attempt (capped), so replicas that
        failed together do not retry together."""
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))


class TokenBucket:
    """At most `rate` requests a second on average, bursts up to `rate` (at least one)."""

    def __init__(
        self,
        rate: float,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._sleep = sleep
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._now = now
        self._at = now()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Wait until a request may go."""
        async with self._lock:
            while True:
                now = self._now()
                self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self._rate)


@dataclass(frozen=True)
class HttpAnswer:
    """The final answer to a request: 2xx, or a refusal (4xx other than 429)."""

    status: int
    body: str
    retries: int

    @property
    def accepted(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date; None when absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    timeout_seconds: float,
    policy: RetryPolicy,
    bucket: TokenBucket | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> HttpAnswer:
    """POST `body` until it is accepted or refused; DeliveryFailed when the attempts
    run out or the destination asks to wait longer than the policy allows. `headers`
    may be a function, called per attempt (a signature with a fresh timestamp)."""
    last = ""
    for attempt in range(policy.max_attempts):
        if bucket is not None:
            await bucket.take()
        retry_after: float | None = None
        try:
            async with session.post(
                url,
                data=body,
                headers=headers() if callable(headers) else headers,
                timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            ) as response:
                text = (await response.text(errors="replace"))[:RESPONSE_KEPT_CHARS]
                if not _retryable(response.status):
                    return HttpAnswer(response.status, text, attempt)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                last = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            last = type(error).__name__
        if attempt + 1 == policy.max_attempts:
            break
        if retry_after is not None and retry_after > policy.max_seconds:
            raise DeliveryFailed(
                f"{url}: asked to retry after {retry_after:g}s, more than the "
                f"{policy.max_seconds:g}s a run waits; the next run resumes from the cursor"
            )
        await sleep(policy.backoff(attempt, retry_after))
    raise DeliveryFailed(f"{url}: not acknowledged after {policy.max_attempts} attempts ({last})")
