"""Simulated behaviour with a planted signal, written straight into the event tables.

Each profile has a hidden interest and a plan (an identify call on its first day sets
the ``plan`` trait, a third of them "pro", and an ``age``, which means nothing). Every
day it views pages (noise, the same for everyone) and product pages (more with more
interest); on each day it purchases with a probability that rises steeply with its
product views of the previous seven days, and somewhat on the pro plan. So "viewed
products lately" predicts "purchases within the horizon", and a model that finds it
must beat a baseline that only knows how active and how recent a profile is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.clock import US_PER_DAY
from services.shared.db.tables import events, identities, profiles

ROWS_PER_INSERT = 5_000


@dataclass(frozen=True)
class Planted:
    """What was written: the profile ids and the day range of the events."""

    profile_ids: list[int]
    start_us: int
    end_us: int
    events: int


async def insert_events(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """Insert event rows in chunks (each needs workspace_id, profile_id, type, name,
    timestamp_us, message_id; properties optional)."""
    async with engine.begin() as c:
        for start in range(0, len(rows), ROWS_PER_INSERT):
            await c.execute(
                insert(events),
                [
                    {"received_at_us": r["timestamp_us"], "properties": None, "traits": None, **r}
                    for r in rows[start : start + ROWS_PER_INSERT]
                ],
            )


async def add_profiles(engine: AsyncEngine, ws: str, count: int, now_us: int = 0) -> list[int]:
    """`count` live profiles, each with a user_id identity ``u<profile id>``."""
    async with engine.begin() as c:
        ids = list(
            (
                await c.execute(
                    insert(profiles).returning(profiles.c.profile_id),
                    [
                        {"workspace_id": ws, "canonical_id": 0, "created_at_us": now_us}
                        for _ in range(count)
                    ],
                )
            ).scalars()
        )
        await c.execute(
            profiles.update()
            .where(profiles.c.workspace_id == ws, profiles.c.canonical_id == 0)
            .values(canonical_id=profiles.c.profile_id)
        )
        await c.execute(
            insert(identities),
            [
                {
                    "workspace_id": ws,
                    "id_type": "user_id",
                    "id_value": f"u{pid}",
                    "profile_id": pid,
                    "first_seen_us": now_us,
                }
                for pid in ids
            ],
        )
    return ids


async def plant(
    engine: AsyncEngine,
    ws: str,
    now_us: int,
    profile_count: int = 2_500,
    days: int = 70,
    seed: int = 11,
) -> Planted:
    """Simulate `days` days before `now_us` for `profile_count` new profiles."""
    rng = np.random.default_rng(seed)
    ids = await add_profiles(engine, ws, profile_count, now_us)
    pid = np.array(ids)
    interest = rng.lognormal(mean=-1.2, sigma=1.0, size=profile_count)
    pro = rng.random(profile_count) < 1 / 3
    ages = rng.integers(18, 80, size=profile_count)
    start = now_us - days * US_PER_DAY
    views_by_day = np.zeros((days, profile_count), dtype=np.int64)
    rows: list[dict[str, Any]] = []

    def emit(day: int, counts: np.ndarray, name: str, revenue: bool = False) -> None:
        who = np.repeat(pid, counts)
        at = start + day * US_PER_DAY + rng.integers(0, US_PER_DAY, size=len(who))
        for p, t in zip(who.tolist(), at.tolist(), strict=True):
            row: dict[str, Any] = {
                "workspace_id": ws,
                "profile_id": p,
                "type": "track",
                "name": name,
                "timestamp_us": t,
                "message_id": f"{name}-{len(rows)}",
            }
            if revenue:
                row["properties"] = {"revenue": 20.0, "plan": "pro"}
            rows.append(row)

    for p, is_pro, age in zip(ids, pro.tolist(), ages.tolist(), strict=True):
        rows.append(
            {
                "workspace_id": ws,
                "profile_id": p,
                "type": "identify",
                "name": None,
                "timestamp_us": start + 1,
                "message_id": f"identify-{p}",
                "traits": {"plan": "pro" if is_pro else "basic", "age": age},
            }
        )
    for day in range(days):
        emit(day, rng.poisson(0.4, profile_count), "page_view")
        views = rng.poisson(interest * 0.5)
        views_by_day[day] = views
        emit(day, views, "view_product")
        recent = views_by_day[max(0, day - 7) : day].sum(axis=0)
        chance = 1.0 / (1.0 + np.exp(-(-6.5 + 1.1 * np.minimum(recent, 8) + 0.8 * pro)))
        emit(day, (rng.random(profile_count) < chance).astype(np.int64), "purchase", True)
    await insert_events(engine, rows)
    return Planted(ids, start, now_us, len(rows))
