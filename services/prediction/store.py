"""Persistence of the prediction service: predictions, their versioned models and the
scores (the shared ``prediction_scores`` read model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.prediction.model import (
    UNTRAINED,
    Goal,
    GoalFilter,
    PredictionRecord,
    PredictionSpec,
    Progress,
    ScoredProfile,
)
from services.prediction.tables import prediction_models, predictions
from services.shared.db.tables import identities, prediction_scores
from services.shared.errors import AlreadyExists

# Rows per INSERT of scores: well within Postgres's 32,767 parameters (7 per row).
SCORE_CHUNK = 4_000
_SCORE_COLUMNS = [c.name for c in prediction_scores.columns]


async def _copy_scores(c: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Write score rows with COPY on the transaction's own connection: a million rows
    in seconds where batched INSERTs take a minute (bench/prediction_scale.py)."""
    raw = await c.get_raw_connection()
    records = [
        tuple(orjson.dumps(r[k]).decode() if k == "reasons" else r[k] for k in _SCORE_COLUMNS)
        for r in rows
    ]
    await raw.driver_connection.copy_records_to_table(
        "prediction_scores", records=records, columns=_SCORE_COLUMNS
    )


@dataclass(frozen=True)
class StoredModel:
    """One trained model version of a prediction."""

    version: int
    cutoff_us: int
    model_text: str
    spec: dict[str, Any]
    metrics: dict[str, Any]
    created_at_us: int


def _goal(raw: dict[str, Any]) -> Goal:
    return Goal(
        raw["event"],
        tuple(
            GoalFilter(
                f["property"],
                f["op"],
                tuple(f["value"]) if isinstance(f.get("value"), list) else f.get("value"),
            )
            for f in raw.get("where", [])
        ),
    )


def _record(r: Any) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=r.prediction_id,
        key=r.key,
        name=r.name,
        goal=_goal(r.goal),
        horizon_days=r.horizon_days,
        population=r.population,
        state=r.state,
        failure_reason=r.failure_reason or "",
        model_version=r.model_version,
        trained_at_us=r.trained_at_us,
        scored_at_us=r.scored_at_us,
        created_at_us=r.created_at_us,
        updated_at_us=r.updated_at_us,
        progress=Progress(r.progress_done, r.progress_total, r.progress_stage),
        attempted_at_us=r.attempted_at_us,
    )


class PredictionStore:
    """SQL of predictions, models and scores."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, ws: str, spec: PredictionSpec, now_us: int) -> PredictionRecord:
        """Insert a new prediction (ALREADY_EXISTS when the key is taken)."""
        values = {
            "workspace_id": ws,
            "key": spec.key,
            "name": spec.name,
            "goal": spec.goal.as_json(),
            "horizon_days": spec.horizon_days,
            "population": spec.population,
            "state": UNTRAINED,
            "model_version": 0,
            "progress_done": 0,
            "progress_total": 0,
            "progress_stage": "",
            "created_at_us": now_us,
            "updated_at_us": now_us,
        }
        try:
            async with self._engine.begin() as c:
                await c.execute(insert(predictions).values(**values))
        except IntegrityError:
            raise AlreadyExists(f"prediction {spec.key!r} already exists") from None
        found = await self.get(ws, spec.key)
        assert found is not None
        return found

    async def get(self, ws: str, key: str) -> PredictionRecord | None:
        """The prediction with `key`, if any."""
        async with self._engine.connect() as c:
            row = (
                await c.execute(
                    select(predictions).where(
                        predictions.c.workspace_id == ws, predictions.c.key == key
                    )
                )
            ).first()
        return _record(row) if row is not None else None

    async def list_predictions(self, ws: str, after_key: str, limit: int) -> list[PredictionRecord]:
        """Up to `limit` predictions by key, after `after_key`."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(predictions)
                .where(predictions.c.workspace_id == ws, predictions.c.key > after_key)
                .order_by(predictions.c.key)
                .limit(limit)
            )
            return [_record(r) for r in rows]

    async def every_prediction(self) -> list[tuple[str, PredictionRecord]]:
        """Every prediction of every workspace (the scheduler's round)."""
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(predictions).order_by(predictions.c.workspace_id, predictions.c.key)
            )
            return [(r.workspace_id, _record(r)) for r in rows]

    async def acquire_lease(
        self, prediction_id: int, owner: str, now_us: int, until_us: int
    ) -> bool:
        """Take the prediction's job lease unless another owner holds a live one."""
        async with self._engine.begin() as c:
            taken = await c.execute(
                update(predictions)
                .where(
                    predictions.c.prediction_id == prediction_id,
                    sa.or_(
                        predictions.c.lease_until_us.is_(None),
                        predictions.c.lease_until_us < now_us,
                        predictions.c.lease_owner == owner,
                    ),
                )
                .values(lease_owner=owner, lease_until_us=until_us)
            )
        return taken.rowcount == 1

    async def _update_leased(self, prediction_id: int, owner: str, **values: Any) -> None:
        """Update the prediction's row only while `owner` holds its lease."""
        async with self._engine.begin() as c:
            await c.execute(
                update(predictions)
                .where(
                    predictions.c.prediction_id == prediction_id,
                    predictions.c.lease_owner == owner,
                )
                .values(**values)
            )

    async def progress(
        self, prediction_id: int, owner: str, until_us: int, progress: Progress
    ) -> None:
        """Record the job's progress and extend its lease (only while `owner` holds it)."""
        await self._update_leased(
            prediction_id,
            owner,
            lease_until_us=until_us,
            progress_done=progress.done,
            progress_total=progress.total,
            progress_stage=progress.stage,
        )

    async def release_lease(self, prediction_id: int, owner: str) -> None:
        """Give the lease back (a no-op when another owner has taken it since)."""
        await self._update_leased(prediction_id, owner, lease_owner=None, lease_until_us=None)

    async def delete(self, ws: str, record: PredictionRecord) -> list[int]:
        """Delete a prediction with its models and scores; returns the scored profiles."""
        async with self._engine.begin() as c:
            scored = await self._scored_profiles(c, ws, record.key)
            await c.execute(
                delete(prediction_scores).where(
                    prediction_scores.c.workspace_id == ws, prediction_scores.c.key == record.key
                )
            )
            await c.execute(
                delete(prediction_models).where(
                    prediction_models.c.prediction_id == record.prediction_id
                )
            )
            await c.execute(
                delete(predictions).where(predictions.c.prediction_id == record.prediction_id)
            )
        return scored

    async def set_state(self, prediction_id: int, now_us: int, **values: Any) -> None:
        """Update state columns (state, failure_reason, trained/scored time)."""
        async with self._engine.begin() as c:
            await c.execute(
                update(predictions)
                .where(predictions.c.prediction_id == prediction_id)
                .values(updated_at_us=now_us, **values)
            )

    async def add_model(
        self,
        ws: str,
        record: PredictionRecord,
        cutoff_us: int,
        model_text: str,
        spec: dict[str, Any],
        metrics: dict[str, Any],
        now_us: int,
    ) -> int:
        """Store the next model version and make it the prediction's current one."""
        async with self._engine.begin() as c:
            latest = (
                await c.execute(
                    select(func.coalesce(func.max(prediction_models.c.version), 0)).where(
                        prediction_models.c.prediction_id == record.prediction_id
                    )
                )
            ).scalar_one()
            version = int(latest) + 1
            await c.execute(
                insert(prediction_models).values(
                    prediction_id=record.prediction_id,
                    version=version,
                    workspace_id=ws,
                    cutoff_us=cutoff_us,
                    model=model_text,
                    spec=spec,
                    metrics=metrics,
                    created_at_us=now_us,
                )
            )
            await c.execute(
                update(predictions)
                .where(predictions.c.prediction_id == record.prediction_id)
                .values(
                    model_version=version,
                    state="ready",
                    failure_reason=None,
                    trained_at_us=now_us,
                    updated_at_us=now_us,
                )
            )
        return version

    async def model(self, record: PredictionRecord) -> StoredModel | None:
        """The prediction's current model."""
        async with self._engine.connect() as c:
            row = (
                await c.execute(
                    select(prediction_models).where(
                        prediction_models.c.prediction_id == record.prediction_id,
                        prediction_models.c.version == record.model_version,
                    )
                )
            ).first()
        if row is None:
            return None
        return StoredModel(
            row.version, row.cutoff_us, row.model, row.spec, row.metrics, row.created_at_us
        )

    @staticmethod
    async def _scored_profiles(c: Any, ws: str, key: str) -> list[int]:
        rows = await c.execute(
            select(prediction_scores.c.profile_id).where(
                prediction_scores.c.workspace_id == ws, prediction_scores.c.key == key
            )
        )
        return [r[0] for r in rows]

    async def replace_scores(
        self, ws: str, record: PredictionRecord, rows: Sequence[dict[str, Any]], now_us: int
    ) -> list[int]:
        """Replace the prediction's scores with `rows` in one transaction; returns the
        profiles that had a score before and have none now."""
        async with self._engine.begin() as c:
            before = await self._scored_profiles(c, ws, record.key)
            await c.execute(
                delete(prediction_scores).where(
                    prediction_scores.c.workspace_id == ws, prediction_scores.c.key == record.key
                )
            )
            if c.dialect.name == "postgresql":
                await _copy_scores(c, rows)
            else:
                for start in range(0, len(rows), SCORE_CHUNK):
                    await c.execute(
                        insert(prediction_scores), list(rows[start : start + SCORE_CHUNK])
                    )
            await c.execute(
                update(predictions)
                .where(predictions.c.prediction_id == record.prediction_id)
                .values(scored_at_us=now_us, updated_at_us=now_us)
            )
        kept = {r["profile_id"] for r in rows}
        return [p for p in before if p not in kept]

    async def scores(
        self,
        ws: str,
        key: str,
        min_percentile: float,
        max_percentile: float,
        after: tuple[float, int] | None,
        limit: int,
    ) -> list[ScoredProfile]:
        """Scores with min <= percentile <= max, highest first (then by profile id),
        after the (percentile, profile id) `after`."""
        s = prediction_scores
        query = select(s).where(
            s.c.workspace_id == ws,
            s.c.key == key,
            s.c.percentile >= min_percentile,
            s.c.percentile <= max_percentile,
        )
        if after is not None:
            query = query.where(
                sa.or_(
                    s.c.percentile < after[0],
                    sa.and_(s.c.percentile == after[0], s.c.profile_id > after[1]),
                )
            )
        query = query.order_by(s.c.percentile.desc(), s.c.profile_id).limit(limit)
        async with self._engine.connect() as c:
            rows = await c.execute(query)
            return [
                ScoredProfile(
                    r.profile_id,
                    r.probability,
                    r.percentile,
                    tuple(reason["text"] for reason in (r.reasons or [])),
                )
                for r in rows
            ]

    async def identifiers(
        self, ws: str, profile_ids: Sequence[int]
    ) -> dict[int, list[tuple[str, str]]]:
        """Every identifier of each of `profile_ids` (one statement for a page)."""
        found: dict[int, list[tuple[str, str]]] = {p: [] for p in profile_ids}
        if not profile_ids:
            return found
        async with self._engine.connect() as c:
            rows = await c.execute(
                select(identities.c.profile_id, identities.c.id_type, identities.c.id_value)
                .where(
                    identities.c.workspace_id == ws,
                    identities.c.profile_id.in_(list(profile_ids)),
                )
                .order_by(identities.c.profile_id, identities.c.id_type, identities.c.id_value)
            )
            for r in rows:
                found[r.profile_id].append((r.id_type, r.id_value))
        return found
