"""Wall-clock time per named phase of a long operation (a recompute's evaluation, diff,
writes, commit, hot state), recorded only while a caller asks for it.

The code being measured marks its phases with ``with phase("diff"): ...``; a caller
(a benchmark, a test) wraps the operation in ``with recording() as times:`` and reads
the seconds per phase from ``times`` afterwards. Outside ``recording()`` a phase costs
one context-variable lookup, so the marks stay in production code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["phase", "recording"]

_times: ContextVar[dict[str, float] | None] = ContextVar("phase_times", default=None)


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect phase name -> seconds (summed over repeats) of the code run inside."""
    times: dict[str, float] = {}
    token = _times.set(times)
    try:
        yield times
    finally:
        _times.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent inside to `name` in the current recording, if any."""
    times = _times.get()
    if times is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
