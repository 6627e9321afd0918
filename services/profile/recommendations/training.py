"""The training job of one recommendation object: read its interactions, score every
live profile of the workspace (services.profile.recommendations.scoring), write each
profile's top N to the database (the recommendation_lists read model) and the hot
state, and record progress and figures as it goes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from services.profile.recommendations import ranker, scoring
from services.profile.recommendations.definition import (
    RecommendationModel,
    TrainingState,
    TrainingStatus,
)
from services.profile.recommendations.hotwrite import RecommendationWriter
from services.profile.recommendations.store import InteractionRows, RecommendationStore
from services.shared.clock import Clock

log = logging.getLogger(__name__)

# Progress recorded once the inputs are read, once every profile is scored and once
# the lists are in the database; the hot-state writes fill the rest.
_LOADED = 0.1
_SCORED = 0.5
_SAVED = 0.6
_PROGRESS_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class Catalogue:
    """A training's index spaces: item ids and profile ids by index."""

    item_ids: list[str]
    profile_ids: list[int]


def build_inputs(
    model: RecommendationModel, rows: InteractionRows, live_profiles: list[int]
) -> tuple[scoring.Interactions, Catalogue, npt.NDArray[np.int64]]:
    """The scoring arrays of these rows, their catalogue, and each item's latest event
    seq (for its metadata). Every live profile gets a row, cold ones included."""
    item_ids, item_index = np.unique(np.array(rows.item_ids, dtype=object), return_inverse=True)
    profile_ids, profile_index = np.unique(
        np.concatenate(
            [np.array(live_profiles, dtype=np.int64), np.array(rows.profile_ids, dtype=np.int64)]
        ),
        return_inverse=True,
    )
    weight_of = model.weight_of()
    weights = np.array([weight_of[name] for name in rows.event_names], dtype=np.float64)
    times = np.array(rows.timestamps_us, dtype=np.int64)
    seqs = np.array(rows.seqs, dtype=np.int64)
    items = item_index.astype(np.int64)
    interactions = scoring.Interactions(
        profiles=profile_index[len(live_profiles) :].astype(np.int64),
        items=items,
        weights=weights,
        timestamps_us=times,
        profile_count=len(profile_ids),
        item_count=len(item_ids),
    )
    latest_seq = np.zeros(len(item_ids), dtype=np.int64)
    if len(items):
        # The last row of each item in (item, time, seq) order is its latest event.
        order = np.lexsort((seqs, times, items))
        last = np.flatnonzero(np.r_[items[order][1:] != items[order][:-1], True])
        latest_seq[items[order][last]] = seqs[order][last]
    return interactions, Catalogue([str(i) for i in item_ids], profile_ids.tolist()), latest_seq


def excluded(model: RecommendationModel, metadata: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """Which items the object's exclusions rule out, by their latest properties."""
    blocked = np.zeros(len(metadata), dtype=bool)
    for exclusion in model.exclusions:
        values = set(exclusion.values)
        for index, properties in enumerate(metadata):
            if exclusion.property in properties and _text(properties[exclusion.property]) in values:
                blocked[index] = True
    return blocked


def goal_mask(model: RecommendationModel, rows: InteractionRows) -> npt.NDArray[np.bool_] | None:
    """Which interactions are the object's goal event (None without one)."""
    if not model.goal_event:
        return None
    return np.array([name == model.goal_event for name in rows.event_names], dtype=bool)


def _text(value: Any) -> str:
    # Compared as the JSON scalar's text: true/false, numbers as written, strings bare.
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class Trainer:
    """Runs training jobs against one store and hot state."""

    def __init__(
        self,
        store: RecommendationStore,
        writer: RecommendationWriter,
        clock: Clock,
        settings: scoring.Settings | None = None,
        knobs: ranker.RankerSettings | None = None,
        report: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """`report` hears (workspace, object key, progress 0..1) each time progress is
        recorded (the training job prints it)."""
        self._store = store
        self._writer = writer
        self._clock = clock
        self._settings = settings or scoring.Settings()
        self._knobs = knobs or ranker.RankerSettings()
        self._report = report

    async def _progress(self, workspace_id: str, key: str, progress: float) -> None:
        await self._store.record_progress(workspace_id, key, progress)
        if self._report is not None:
            self._report(workspace_id, key, progress)

    async def run(self, workspace_id: str, key: str) -> TrainingStatus:
        """Train the object (already marked running) and record how it ended."""
        status = TrainingStatus(state=TrainingState.FAILED)
        try:
            status = await self._train(workspace_id, key)
        except Exception as error:  # any failure ends the job as failed
            log.exception("recommendation training failed", extra={"model_key": key})
            status = TrainingStatus(state=TrainingState.FAILED, error=str(error) or repr(error))
        await self._store.finish_training(workspace_id, key, self._clock.now_us(), status)
        return status

    async def _train(self, workspace_id: str, key: str) -> TrainingStatus:
        model = await self._store.get(workspace_id, key)
        rows = await self._store.interactions(workspace_id, model)
        live = await self._store.live_profiles(workspace_id)
        interactions, catalogue, latest_seq = build_inputs(model, rows, live)
        properties = await self._store.event_properties(workspace_id, latest_seq.tolist())
        metadata = [properties.get(int(seq), {}) for seq in latest_seq]
        await self._progress(workspace_id, key, _LOADED)
        item_metadata = ranker.ItemMetadata(
            categories=ranker.categories_from_properties(metadata, model.item_property)
        )
        # The model runs in a worker thread that notes its share done; this task records
        # it every second (one writer, so progress never goes backwards).
        share = [0.0]
        job = asyncio.ensure_future(
            asyncio.to_thread(
                ranker.recommend,
                interactions,
                self._clock.now_us(),
                model.size,
                self._settings,
                item_metadata,
                self._knobs,
                allow_consumed=model.recommend_consumed,
                excluded_items=excluded(model, metadata),
                progress=lambda done: share.__setitem__(0, done),
                goal=goal_mask(model, rows),
            )
        )
        while not job.done():
            await asyncio.wait({job}, timeout=_PROGRESS_EVERY_SECONDS)
            await self._progress(workspace_id, key, _LOADED + (_SCORED - _LOADED) * share[0])
        top, ranked = job.result()
        log.info(
            "recommendations scored by the %s",
            "ranker" if ranked else "blend",
            extra={"model_key": key, "ranked": ranked},
        )
        await self._progress(workspace_id, key, _SCORED)
        metadata_text = [
            orjson.dumps({k: v for k, v in m.items() if k != model.item_property}).decode()
            for m in metadata
        ]
        lists = [
            (
                profile_id,
                [
                    {
                        "item_id": catalogue.item_ids[item],
                        "score": round(float(score), 6),
                        "model": key,
                        "metadata": metadata_text[item],
                    }
                    for item, score in zip(items.tolist(), scores.tolist(), strict=True)
                    if item >= 0
                ],
            )
            for profile_id, items, scores in zip(
                catalogue.profile_ids, top.items, top.scores, strict=True
            )
        ]

        # What a profile without a list of its own (created since) gets: the popular
        # items a cold profile got above, kept in the database for a rebuild; and as
        # many again that follow them (the reserve), which refill the list for a
        # profile that has consumed some of it since (recs_consumed).
        def popular_top(size: int) -> list[dict[str, Any]]:
            top = scoring.popular_top_n(
                interactions,
                self._clock.now_us(),
                size,
                self._settings,
                excluded_items=excluded(model, metadata),
            )
            return [
                {
                    "item_id": catalogue.item_ids[item],
                    "score": round(float(score), 6),
                    "model": key,
                    "metadata": metadata_text[item],
                }
                for item, score in zip(top.items[0].tolist(), top.scores[0].tolist(), strict=True)
                if item >= 0
            ]

        popular_items = popular_top(model.size)
        # Computed apart (not the head of the longer list): the popular list stays
        # exactly what a cold profile got, ties included.
        listed = {item["item_id"] for item in popular_items}
        reserve = [i for i in popular_top(2 * model.size) if i["item_id"] not in listed]
        # The database first (the source a rebuild and the syncs read), in one
        # transaction; then the hot state, profile batch by batch.
        encoded = [(pid, orjson.dumps(items)) for pid, items in lists]
        await self._store.save_lists(
            workspace_id, key, encoded, popular_items + reserve, self._clock.now_us()
        )
        await self._progress(workspace_id, key, _SAVED)

        async def written(share: float) -> None:
            await self._progress(workspace_id, key, _SAVED + (1 - _SAVED) * share)

        await self._writer.replace_encoded(workspace_id, key, encoded, written)
        await self._writer.set_popular(workspace_id, key, popular_items, reserve)
        return TrainingStatus(
            state=TrainingState.SUCCEEDED,
            profiles=len(catalogue.profile_ids),
            items=len(catalogue.item_ids),
            interactions=len(rows.item_ids),
        )
