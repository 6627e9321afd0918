"""Postgres/SQLite side of recommendations: the objects, their training status, the
interactions a training reads, and the lists it wrote (the shared read model
``recommendation_lists``; never on a serving path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.profile.recommendations.definition import (
    ItemEvent,
    ItemExclusion,
    RecommendationModel,
    TrainingState,
    TrainingStatus,
)
from services.profile.tables import recommendation_models
from services.shared.db.engine import is_postgres
from services.shared.db.tables import events, profiles, recommendation_lists
from services.shared.errors import AlreadyExists, FailedPrecondition, NotFound

# A training marked running for longer than this died with its process: it may restart.
STALE_TRAINING_US = 6 * 3600 * 1_000_000
# The fields of a recommended item, in the order the hot state's lists hold them.
_ITEM_FIELDS = ("item_id", "score", "model", "metadata")
# Events whose properties are read per query when looking up item metadata.
_METADATA_CHUNK = 1000
# Lists per INSERT where COPY is not available (SQLite): one statement per chunk.
_LIST_CHUNK = 2000
_LIST_COLUMNS = [c.name for c in recommendation_lists.columns]


@dataclass(frozen=True)
class InteractionRows:
    """A workspace's item interactions, one entry per event (parallel lists)."""

    profile_ids: list[int]
    item_ids: list[str]
    event_names: list[str]
    timestamps_us: list[int]
    seqs: list[int]


def _not_found(key: str) -> NotFound:
    return NotFound(f"no recommendation object {key!r} in this workspace")


def _model(row: Any) -> RecommendationModel:
    return RecommendationModel(
        key=row.key,
        item_events=tuple(ItemEvent(e["event_name"], float(e["weight"])) for e in row.item_events),
        item_property=row.item_property,
        size=row.size,
        recommend_consumed=row.recommend_consumed,
        exclusions=tuple(ItemExclusion(x["property"], tuple(x["values"])) for x in row.exclusions),
        created_at_us=row.created_at_us,
        goal_event=row.goal_event or "",
        training=TrainingStatus(
            state=TrainingState(row.training_state),
            progress=row.training_progress,
            started_at_us=row.training_started_at_us,
            finished_at_us=row.training_finished_at_us,
            profiles=row.trained_profiles,
            items=row.trained_items,
            interactions=row.trained_interactions,
            error=row.training_error,
            requested_at_us=row.training_requested_at_us,
        ),
    )


def _item_text(value: Any) -> str | None:
    # SQLite's json_extract gives numbers as numbers, Postgres's ->> as text: one form.
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class RecommendationStore:
    """SQL access of recommendation objects and training inputs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, workspace_id: str, model: RecommendationModel) -> RecommendationModel:
        """Store a new object; AlreadyExists if its key is taken in the workspace."""
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    insert(recommendation_models).values(
                        workspace_id=workspace_id,
                        key=model.key,
                        item_events=[
                            {"event_name": e.event_name, "weight": e.weight}
                            for e in model.item_events
                        ],
                        item_property=model.item_property,
                        size=model.size,
                        recommend_consumed=model.recommend_consumed,
                        exclusions=[
                            {"property": x.property, "values": list(x.values)}
                            for x in model.exclusions
                        ],
                        created_at_us=model.created_at_us,
                        goal_event=model.goal_event or None,
                        training_state=TrainingState.NEVER_TRAINED.value,
                        training_progress=0.0,
                        trained_profiles=0,
                        trained_items=0,
                        trained_interactions=0,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(
                f"a recommendation object {model.key!r} exists in this workspace"
            ) from None
        return await self.get(workspace_id, model.key)

    async def get(self, workspace_id: str, key: str) -> RecommendationModel:
        """One object; NotFound if absent."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(recommendation_models).where(
                        recommendation_models.c.workspace_id == workspace_id,
                        recommendation_models.c.key == key,
                    )
                )
            ).first()
        if row is None:
            raise _not_found(key)
        return _model(row)

    async def all_models(self, workspace_id: str) -> list[RecommendationModel]:
        """Every object of the workspace, by key."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(recommendation_models)
                .where(recommendation_models.c.workspace_id == workspace_id)
                .order_by(recommendation_models.c.key)
            )
            return [_model(row) for row in rows]

    async def every_model(self) -> list[tuple[str, RecommendationModel]]:
        """Every object of every workspace, as (workspace, object), in a stable order."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(recommendation_models).order_by(
                    recommendation_models.c.workspace_id, recommendation_models.c.key
                )
            )
            return [(row.workspace_id, _model(row)) for row in rows]

    async def delete(self, workspace_id: str, key: str) -> None:
        """Remove an object and its profiles' lists; NotFound if absent."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(recommendation_models).where(
                    recommendation_models.c.workspace_id == workspace_id,
                    recommendation_models.c.key == key,
                )
            )
            await connection.execute(
                delete(recommendation_lists).where(
                    recommendation_lists.c.workspace_id == workspace_id,
                    recommendation_lists.c.model_key == key,
                )
            )
        if result.rowcount == 0:
            raise _not_found(key)

    async def start_training(self, workspace_id: str, key: str, now_us: int) -> None:
        """Mark a training running; FailedPrecondition if one already is (one at a time).

        The update is conditional, so it is the training's lease: of concurrent
        runners (service replicas, training jobs) exactly one's update matches."""
        await self._idle_update(
            workspace_id,
            key,
            now_us,
            training_state=TrainingState.RUNNING.value,
            training_progress=0.0,
            training_started_at_us=now_us,
            training_finished_at_us=None,
            training_error=None,
            training_requested_at_us=None,
        )

    async def request_training(self, workspace_id: str, key: str, now_us: int) -> None:
        """Record that a training is asked for (the training job's next run starts it);
        FailedPrecondition if one is running."""
        await self._idle_update(workspace_id, key, now_us, training_requested_at_us=now_us)

    async def _idle_update(self, workspace_id: str, key: str, now_us: int, **values: Any) -> None:
        # Matches only an object not training (or whose training went stale).
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(recommendation_models)
                .where(
                    recommendation_models.c.workspace_id == workspace_id,
                    recommendation_models.c.key == key,
                    or_(
                        recommendation_models.c.training_state != TrainingState.RUNNING.value,
                        recommendation_models.c.training_started_at_us < now_us - STALE_TRAINING_US,
                    ),
                )
                .values(**values)
            )
        if result.rowcount == 0:
            await self.get(workspace_id, key)  # NotFound when it is absent
            raise FailedPrecondition(f"recommendation object {key!r} is already training")

    async def record_progress(self, workspace_id: str, key: str, progress: float) -> None:
        """Record how far a running training is (0..1)."""
        await self._update(workspace_id, key, training_progress=progress)

    async def finish_training(
        self, workspace_id: str, key: str, now_us: int, status: TrainingStatus
    ) -> None:
        """Record a finished training (succeeded or failed) and its figures."""
        await self._update(
            workspace_id,
            key,
            training_state=status.state.value,
            training_progress=1.0 if status.state is TrainingState.SUCCEEDED else status.progress,
            training_finished_at_us=now_us,
            trained_profiles=status.profiles,
            trained_items=status.items,
            trained_interactions=status.interactions,
            training_error=status.error,
        )

    async def save_lists(
        self,
        workspace_id: str,
        key: str,
        lists: Sequence[tuple[int, bytes]],
        popular: Sequence[dict[str, Any]],
        trained_at_us: int,
    ) -> None:
        """Replace the object's profile lists (profile id, the items as a JSON array;
        an empty array keeps no row) and its popular items (followed by their
        reserve: popular_lists splits them by the object's size), in one transaction: a
        reader sees the previous training's rows or this one's, never a mix. The rows
        go in with COPY on Postgres (executemany chunks elsewhere), not a statement per
        profile."""
        records = [
            (workspace_id, key, pid, text.decode(), trained_at_us)
            for pid, text in lists
            if text != b"[]"
        ]
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(recommendation_lists).where(
                    recommendation_lists.c.workspace_id == workspace_id,
                    recommendation_lists.c.model_key == key,
                )
            )
            if records and is_postgres(self._engine):
                raw = await connection.get_raw_connection()
                await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                    "recommendation_lists", records=records, columns=_LIST_COLUMNS
                )
            else:
                for start in range(0, len(records), _LIST_CHUNK):
                    await connection.execute(
                        insert(recommendation_lists),
                        [
                            dict(zip(_LIST_COLUMNS, record, strict=True))
                            for record in records[start : start + _LIST_CHUNK]
                        ],
                    )
            await connection.execute(
                update(recommendation_models)
                .where(
                    recommendation_models.c.workspace_id == workspace_id,
                    recommendation_models.c.key == key,
                )
                .values(popular_items=list(popular))
            )

    async def model_keys(self, workspace_id: str) -> list[str]:
        """The keys of the workspace's objects, in order."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(recommendation_models.c.key)
                .where(recommendation_models.c.workspace_id == workspace_id)
                .order_by(recommendation_models.c.key)
            )
            return [row[0] for row in rows]

    async def popular_lists(
        self, workspace_id: str
    ) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
        """(object key, popular items, the reserve that follows them) of every object of
        the workspace trained since popular lists were kept, by key. The column holds
        both: the object's size of items, then the reserve."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(
                    recommendation_models.c.key,
                    recommendation_models.c.popular_items,
                    recommendation_models.c.size,
                )
                .where(
                    recommendation_models.c.workspace_id == workspace_id,
                    recommendation_models.c.popular_items.is_not(None),
                )
                .order_by(recommendation_models.c.key)
            )
            found = []
            for key, items, size in rows:
                if isinstance(items, str | bytes):
                    items = orjson.loads(items)
                # JSONB keeps no key order: the items come back in the order written.
                ordered = [{k: item[k] for k in _ITEM_FIELDS if k in item} for item in items or []]
                found.append((key, ordered[:size], ordered[size:]))
            return found

    async def _update(self, workspace_id: str, key: str, **values: Any) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(recommendation_models)
                .where(
                    recommendation_models.c.workspace_id == workspace_id,
                    recommendation_models.c.key == key,
                )
                .values(**values)
            )

    async def interactions(self, workspace_id: str, model: RecommendationModel) -> InteractionRows:
        """The workspace's item events of the object, by surviving, undeleted profile."""
        item = events.c.properties[model.item_property].as_string()
        query = (
            select(
                profiles.c.canonical_id, item, events.c.name, events.c.timestamp_us, events.c.seq
            )
            .select_from(events.join(profiles, profiles.c.profile_id == events.c.profile_id))
            .where(
                events.c.workspace_id == workspace_id,
                events.c.type == "track",
                events.c.name.in_([e.event_name for e in model.item_events]),
                item.is_not(None),
                profiles.c.deleted_at_us.is_(None),
            )
            .order_by(events.c.seq)
        )
        found = InteractionRows([], [], [], [], [])
        async with self._engine.connect() as connection:
            result = await connection.stream(query)
            async for rows in result.partitions(10_000):
                for profile_id, item_id, name, timestamp_us, seq in rows:
                    text = _item_text(item_id)
                    if text is None or text == "":
                        continue
                    found.profile_ids.append(profile_id)
                    found.item_ids.append(text)
                    found.event_names.append(name)
                    found.timestamps_us.append(timestamp_us)
                    found.seqs.append(seq)
        return found

    async def live_profiles(self, workspace_id: str) -> list[int]:
        """Every surviving, undeleted profile of the workspace (cold ones included)."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(profiles.c.profile_id)
                .where(
                    and_(
                        profiles.c.workspace_id == workspace_id,
                        profiles.c.canonical_id == profiles.c.profile_id,
                        profiles.c.deleted_at_us.is_(None),
                    )
                )
                .order_by(profiles.c.profile_id)
            )
            return [row[0] for row in rows]

    async def event_properties(
        self, workspace_id: str, seqs: Sequence[int]
    ) -> dict[int, dict[str, Any]]:
        """The properties of these events (seq -> object), for item metadata."""
        found: dict[int, dict[str, Any]] = {}
        async with self._engine.connect() as connection:
            for start in range(0, len(seqs), _METADATA_CHUNK):
                chunk = list(seqs[start : start + _METADATA_CHUNK])
                rows = await connection.execute(
                    select(events.c.seq, events.c.properties).where(
                        events.c.workspace_id == workspace_id, events.c.seq.in_(chunk)
                    )
                )
                for seq, properties in rows:
                    if isinstance(properties, str | bytes):
                        properties = orjson.loads(properties)
                    found[seq] = properties if isinstance(properties, dict) else {}
        return found
