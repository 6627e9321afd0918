"""Exposures logged by GetProfile (``log_exposure``), written off the request path.

A GetProfile that asks to log its answer as an exposure appends one row per measured
audience (one with a goal) in the answer to an in-memory buffer; a background worker
of the profile process inserts the buffer into ``audience_exposures`` every
FLUSH_SECONDS in one statement, and once more when the process stops (after the
server drained its RPCs). So the request itself never waits for the database. What a
process killed without a drain holds (at most FLUSH_SECONDS of exposures) is lost:
exposure counts are statistics, not acknowledged data, and apps needing every one
send the "Audience Exposure" track event instead (docs/audiences.md, "Performance").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.db.tables import audience_exposures
from services.shared.errors import ResourceExhausted

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
# Rows held at most: beyond it (the database is down or far behind) a logging read is
# refused rather than growing the process without bound.
MAX_BUFFERED = 200_000


class ExposureLog:
    """The buffer and its writer for one process."""

    def __init__(self, engine: AsyncEngine, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._engine = engine
        self._flush_seconds = flush_seconds
        self._rows: list[dict[str, object]] = []

    def record(self, workspace_id: str, keys: Iterable[str], profile_id: str, at_us: int) -> None:
        """Buffer one exposure per audience key (RESOURCE_EXHAUSTED when full)."""
        if len(self._rows) >= MAX_BUFFERED:
            raise ResourceExhausted("too many exposures waiting to be written; retry later")
        pid = int(profile_id)
        self._rows.extend(
            {
                "workspace_id": workspace_id,
                "audience_key": k,
                "profile_id": pid,
                "exposed_at_us": at_us,
            }
            for k in keys
        )

    async def flush(self) -> int:
        """Insert what is buffered; returns the rows written (kept for the next try on error)."""
        rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            async with self._engine.begin() as c:
                await c.execute(insert(audience_exposures), rows)
        except Exception:
            self._rows = rows + self._rows
            raise
        return len(rows)

    async def run(self) -> None:
        """Flush every `flush_seconds` until cancelled, then flush the rest."""
        try:
            while True:
                await asyncio.sleep(self._flush_seconds)  # the write cadence, not a sync wait
                try:
                    await self.flush()
                except Exception:
                    log.exception("writing exposures failed; kept for the next flush")
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
