"""Reads behind GetAudiencePerformance: each person's first exposure to an audience's
experience and their goal events after it (services/segmentation/performance.py does
the statistics).

An exposure is a track event named EXPOSURE_EVENT whose ``audience`` property is the
audience key (the app sends it when it shows the experience, or would have shown it
to a held-out member), or a row of ``audience_exposures`` (GetProfile with
``log_exposure``). People are counted by their surviving profile (merges honoured).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.db.tables import audience_exposures, events, profiles

__all__ = ["EXPOSURE_EVENT", "PerformanceStore"]

EXPOSURE_EVENT = "Audience Exposure"
# Profiles per IN list of the goal-event read.
_CHUNK = 5_000


class PerformanceStore:
    """Exposures and goal events of one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def first_exposures(
        self, ws: str, audience_key: str, start_us: int, end_us: int
    ) -> dict[int, int]:
        """Surviving profile id -> its first exposure in [start_us, end_us)."""
        canonical = profiles.c.canonical_id
        from_events = (
            select(canonical.label("pid"), events.c.timestamp_us.label("at"))
            .select_from(
                events.join(
                    profiles,
                    and_(
                        profiles.c.workspace_id == events.c.workspace_id,
                        profiles.c.profile_id == events.c.profile_id,
                    ),
                )
            )
            .where(
                events.c.workspace_id == ws,
                events.c.type == "track",
                events.c.name == EXPOSURE_EVENT,
                events.c.timestamp_us >= start_us,
                events.c.timestamp_us < end_us,
                events.c.properties["audience"].as_string() == audience_key,
            )
        )
        from_reads = (
            select(canonical.label("pid"), audience_exposures.c.exposed_at_us.label("at"))
            .select_from(
                audience_exposures.join(
                    profiles,
                    and_(
                        profiles.c.workspace_id == audience_exposures.c.workspace_id,
                        profiles.c.profile_id == audience_exposures.c.profile_id,
                    ),
                )
            )
            .where(
                audience_exposures.c.workspace_id == ws,
                audience_exposures.c.audience_key == audience_key,
                audience_exposures.c.exposed_at_us >= start_us,
                audience_exposures.c.exposed_at_us < end_us,
            )
        )
        first: dict[int, int] = {}
        async with self._engine.connect() as c:
            for query in (from_events, from_reads):
                for pid, at in await c.execute(query):
                    if pid not in first or at < first[pid]:
                        first[pid] = at
        return first

    async def goal_events(
        self,
        ws: str,
        goal: Mapping[str, Any],
        pids: Iterable[int],
        start_us: int,
        end_us: int,
    ) -> dict[int, list[tuple[int, Any]]]:
        """Surviving profile id -> (timestamp, properties) of its goal events (by type
        and name; the filters are the caller's) in (start_us, end_us]."""
        wanted = sorted(set(pids))
        out: dict[int, list[tuple[int, Any]]] = {}
        async with self._engine.connect() as c:
            for first in range(0, len(wanted), _CHUNK):
                chunk: Sequence[int] = wanted[first : first + _CHUNK]
                query = (
                    select(profiles.c.canonical_id, events.c.timestamp_us, events.c.properties)
                    .select_from(
                        events.join(
                            profiles,
                            and_(
                                profiles.c.workspace_id == events.c.workspace_id,
                                profiles.c.profile_id == events.c.profile_id,
                            ),
                        )
                    )
                    .where(
                        events.c.workspace_id == ws,
                        events.c.type == goal["type"],
                        events.c.name == goal["name"],
                        events.c.timestamp_us > start_us,
                        events.c.timestamp_us <= end_us,
                        profiles.c.canonical_id.in_(chunk),
                    )
                )
                for pid, at, properties in await c.execute(query):
                    out.setdefault(pid, []).append((at, properties))
        return out
