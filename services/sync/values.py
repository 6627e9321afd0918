"""The read model of value syncs: each profile's current value of a computed trait
(segmentation's ``computed_trait_values``) or a prediction (the shared
``prediction_scores``), read in the order (computed-at instant, profile id) so a
sync's cursor is a keyset position in it (docs/sync.md, "Computed trait and
prediction syncs").

Sync imports neither segmentation nor prediction: the columns it reads of their own
tables are declared here as table clauses on no metadata (like ``readmodel.audiences``),
so a change to those columns must change this module with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, literal, select, table, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.db.tables import Json, prediction_scores, profiles
from services.sync.model import COMPUTED_TRAIT, PREDICTION, RECOMMENDATION
from services.sync.readmodel import STREAM_ROWS, _id_values, _people
from services.sync.readmodel import active as active_among

computed_traits = table("computed_traits", column("workspace_id"), column("key"))
computed_trait_values = table(
    "computed_trait_values",
    column("workspace_id"),
    column("profile_id"),
    column("key"),
    column("value", Json),
    column("computed_at_us"),
)
predictions = table("predictions", column("workspace_id"), column("key"))
# The profile service's recommendation objects (their lists are the shared read model
# recommendation_lists: services/shared/recommendation_lists.py).
recommendation_models = table("recommendation_models", column("workspace_id"), column("key"))


@dataclass(frozen=True)
class ValueRow:
    """One stored value: its keyset position and the value."""

    at_us: int
    profile_id: int
    value: Any


@dataclass(frozen=True)
class NamedValue:
    """A value named for a destination: the person, their value of the sync's id type
    (None: skipped) and whether they pass the activity filter."""

    row: ValueRow
    person: int
    id_value: str | None
    active: bool


class ValueReader:
    """Reads computed trait values and prediction scores."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def exists(self, ws: str, source: str, key: str) -> bool:
        """Whether the workspace defines the computed trait, prediction or
        recommendation object `key`."""
        defined = {
            COMPUTED_TRAIT: computed_traits,
            PREDICTION: predictions,
            RECOMMENDATION: recommendation_models,
        }[source]
        async with self._engine.connect() as c:
            found = await c.execute(
                select(literal(1)).where(defined.c.workspace_id == ws, defined.c.key == key)
            )
            return found.first() is not None

    @asynccontextmanager
    async def stream(
        self, ws: str, source: str, key: str, after: tuple[int, int], upto_us: int
    ) -> AsyncIterator[AsyncIterator[ValueRow]]:
        """The values after the keyset position `after` (computed-at us, profile id) and
        computed at or before `upto_us`, in that order, of live profiles; streamed from
        one server-side cursor (one sort, however many values)."""
        if source == PREDICTION:
            at: Any = prediction_scores.c.scored_at_us
            pid: Any = prediction_scores.c.profile_id
            value: Any = prediction_scores.c.probability
            source_table: Any = prediction_scores
            where = [prediction_scores.c.workspace_id == ws, prediction_scores.c.key == key]
        else:
            cv = computed_trait_values
            at, pid, value, source_table = cv.c.computed_at_us, cv.c.profile_id, cv.c.value, cv
            where = [cv.c.workspace_id == ws, cv.c.key == key]
        query = (
            select(at, pid, value)
            .select_from(source_table.join(profiles, profiles.c.profile_id == pid))
            .where(
                *where,
                tuple_(at, pid) > tuple_(literal(after[0]), literal(after[1])),
                at <= upto_us,
                profiles.c.deleted_at_us.is_(None),
            )
            .order_by(at, pid)
        )

        async def rows() -> AsyncIterator[ValueRow]:
            async with self._engine.connect() as c:
                result = await c.stream(query.execution_options(yield_per=STREAM_ROWS))
                async for partition in result.partitions():
                    for r in partition:
                        yield ValueRow(int(r[0]), int(r[1]), r[2])

        yield rows()

    async def name(
        self, ws: str, rows: Sequence[ValueRow], id_type: str, active_since_us: int | None
    ) -> list[NamedValue]:
        """Name each value's person by id type, and check the activity filter."""
        async with self._engine.connect() as c:
            people = await _people(c, ws, [r.profile_id for r in rows])
            persons = {people.get(r.profile_id, r.profile_id) for r in rows}
            ids = await _id_values(c, ws, persons, id_type)
            active = persons
            if active_since_us is not None:
                active = await active_among(c, ws, persons, active_since_us)
        out = []
        for r in rows:
            person = people.get(r.profile_id, r.profile_id)
            out.append(NamedValue(r, person, ids.get(person), person in active))
        return out
