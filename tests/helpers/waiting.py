"""Waiting for a condition with a deadline (never a fixed sleep standing in for one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], within: float, what: str, every: float = 0.05
) -> T:
    """Call `probe` until it returns something other than None (or False) and return
    that; TimeoutError saying `what` was awaited once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:g}s")
        await asyncio.sleep(every)
