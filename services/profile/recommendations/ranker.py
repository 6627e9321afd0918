"""A LightGBM lambdarank ranker over candidates from several sources.

Candidates of a profile: the union of the top items of several scorers (consumed items
left out unless allowed, excluded items always):

- the served blend (scoring.top_n's scores: latest-first, windowed, time-decayed
  co-occurrence + a little popularity),
- the time-decayed windowed co-occurrence without the latest-first weighting,
- item-kNN: cosine of the whole history, and cosine with the latest item,
- recent popularity (interactions in the week up to the profile's latest one),
- overall popularity.

Features of a (profile, candidate) pair: every scorer's score and the candidate's rank
under the blend, co-occurrence with the latest few items, overall, recent and
time-decayed popularity, the item's age, when it was last seen, its release time when
metadata gives one, the profile's affinity to the item's categories (whole history and
latest items) when metadata gives categories, the profile's activity (history length,
span, days since its latest interaction) and how recent its latest related interaction
is. Training targets are several earlier next interactions per profile: with the last
`k` interactions of every profile removed (k = 1..targets), the next one is the label
and every feature is recomputed from what is left, so the ranker never learns from an
interaction it is later asked to predict.

Everything is whole-array NumPy/SciPy per block of profiles; LightGBM sees one row per
candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import lightgbm
import numpy as np
import numpy.typing as npt
from scipy import sparse

from services.profile.recommendations import scoring

FEATURES = (
    "blend",
    "blend_rank",
    "windowed",
    "windowed_peak_share",
    "cosine_history",
    "cosine_history_share",
    "cosine_latest",
    "windowed_latest",
    "windowed_latest_3",
    "next_after_latest",
    "next_after_latest_3",
    "related_recency",
    "popularity",
    "popularity_recent_week",
    "popularity_recent_day",
    "popularity_decayed",
    "item_age_days",
    "item_last_seen_days",
    "item_release_days",
    "category_affinity",
    "category_affinity_latest",
    "history_length",
    "history_span_days",
    "profile_idle_days",
)


@dataclass(frozen=True)
class ItemMetadata:
    """What metadata says about items: categories (items x categories, 0/1) and a
    release time per item (-1 when unknown). Either may be absent."""

    categories: sparse.csr_matrix | None = None
    release_us: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class RankerSettings:
    """The ranker's knobs: candidate widths per source, targets, LightGBM parameters."""

    blend_width: int = 50
    windowed_width: int = 20
    cosine_width: int = 30
    latest_width: int = 30
    next_width: int = 30
    recent_width: int = 30
    popular_width: int = 20
    targets: int = 5
    # Learning: the items recorded at the same instant as the next one count as next too.
    tied_positives: bool = False
    recent_us: int = 7 * scoring.DAY_US
    block_profiles: int = 256
    rounds: int = 300
    # Fewer profiles whose earlier target is among their candidates than this: too
    # little to learn from, serve the blend.
    min_groups: int = 200
    # Work budgets in profile x item cells (the candidate stage is dense per block):
    # learning samples its profiles to fit_cells / (targets x items); ranking takes the
    # rank_cells / items most recently active profiles, the others keep the blend.
    fit_cells: int = 100_000_000
    rank_cells: int = 200_000_000
    parameters: dict[str, float | int | str | bool] = field(
        default_factory=lambda: {
            "objective": "lambdarank",
            "learning_rate": 0.03,
            "num_leaves": 15,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "lambdarank_truncation_level": 20,
        }
    )


@dataclass(frozen=True)
class Candidates:
    """Ragged candidates: the profile of each row, its item, its features; rows are
    grouped by profile in ascending order."""

    profiles: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    features: npt.NDArray[np.float64]


def _row_scaled(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    peaks = values.max(axis=1, initial=0.0)
    out = np.zeros_like(values)
    np.divide(values, peaks[:, None], out=out, where=peaks[:, None] > 0)
    return out


class _Context:
    """What every block shares: item-item matrices, popularity and per-profile facts."""

    def __init__(
        self,
        interactions: scoring.Interactions,
        now_us: int,
        settings: scoring.Settings,
        metadata: ItemMetadata,
        ranker: RankerSettings,
        windowed: sparse.csr_matrix | None = None,
    ) -> None:
        self.log = interactions
        self.now_us = now_us
        self.settings = settings
        self.metadata = metadata
        self.ranker = ranker
        n_profiles, n_items = interactions.profile_count, interactions.item_count
        count = len(interactions.items)
        self.windowed = (
            scoring.cooccurrence(interactions, now_us, settings) if windowed is None else windowed
        )
        self.cosine = scoring.cooccurrence(
            interactions, now_us, scoring.Settings(session_window_us=None)
        )
        shape = (n_profiles, n_items)
        recency = scoring.recency(interactions, now_us, settings)
        latest_first = scoring.latest_first(interactions, settings)
        self.history_served = sparse.coo_matrix(
            (
                interactions.weights * recency * latest_first,
                (interactions.profiles, interactions.items),
            ),
            shape=shape,
        ).tocsr()
        self.history_decayed = sparse.coo_matrix(
            (interactions.weights * recency, (interactions.profiles, interactions.items)),
            shape=shape,
        ).tocsr()
        binary = sparse.coo_matrix(
            (np.ones(count), (interactions.profiles, interactions.items)), shape=shape
        ).tocsr()
        binary.data[:] = 1.0
        self.binary = binary
        place = _places(interactions)
        latest = place == 0
        self.latest_item = np.full(n_profiles, -1, dtype=np.int64)
        self.latest_item[interactions.profiles[latest]] = interactions.items[latest]
        self.last_us = np.full(n_profiles, -1, dtype=np.int64)
        np.maximum.at(self.last_us, interactions.profiles, interactions.timestamps_us)
        self.first_us = np.full(n_profiles, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(self.first_us, interactions.profiles, interactions.timestamps_us)
        self.length = np.bincount(interactions.profiles, minlength=n_profiles).astype(np.float64)
        latest3 = place < 3
        self.latest3 = sparse.coo_matrix(
            (
                np.ones(int(latest3.sum())),
                (interactions.profiles[latest3], interactions.items[latest3]),
            ),
            shape=shape,
        ).tocsr()
        # The latest few interactions one place at a time, for "how recent is the
        # latest related interaction" (the latest 10 places bound the work).
        self.item_at_place = np.full((n_profiles, 10), -1, dtype=np.int64)
        early = place < 10
        self.item_at_place[interactions.profiles[early], place[early]] = interactions.items[early]
        self.transitions = _transitions(interactions)
        # The item-item matrices read at (item, item) pairs.
        self.windowed_pairs = _Lookup(*_entries(self.windowed, n_items))
        self.transition_pairs = _Lookup(*_entries(self.transitions, n_items))
        self.cosine_pairs = _Lookup(*_entries(self.cosine, n_items))
        self.popularity = np.bincount(interactions.items, minlength=n_items).astype(np.float64)
        self.popularity_decayed = scoring.popularity(interactions, now_us, settings)
        self.blend_popularity = settings.popularity_weight * scoring.scaled(self.popularity_decayed)
        # Recent popularity as of each profile's latest interaction: cumulative counts
        # per item per day, differenced over the window ending that day.
        day = scoring.DAY_US
        if count:
            origin = int(interactions.timestamps_us.min())
            days = (interactions.timestamps_us - origin) // day
            n_days = int(days.max()) + 2
            per_day = sparse.coo_matrix(
                (np.ones(count), (days, interactions.items)), shape=(n_days, n_items)
            ).toarray()
            self.cumulative = np.vstack([np.zeros((1, n_items)), np.cumsum(per_day, axis=0)])
            self.origin = origin
        else:
            self.cumulative = np.zeros((2, n_items))
            self.origin = 0
        # Per day, each item's interactions in the window ending that day (exact:
        # differences of integer counts), so a block gathers rows of one table.
        self._windows: dict[int, npt.NDArray[np.float64]] = {}
        self.first_seen = np.full(n_items, now_us, dtype=np.int64)
        np.minimum.at(self.first_seen, interactions.items, interactions.timestamps_us)
        self.last_seen = np.full(n_items, -1, dtype=np.int64)
        np.maximum.at(self.last_seen, interactions.items, interactions.timestamps_us)
        categories = metadata.categories
        if categories is not None:
            sizes = np.asarray(categories.sum(axis=1)).ravel()
            scale = np.zeros(len(sizes))
            np.divide(1.0, sizes, out=scale, where=sizes > 0)
            self.item_categories = sparse.csr_matrix(sparse.diags(scale) @ categories)
            self.category_share = _row_normalised(sparse.csr_matrix(binary @ categories))
            latest_rows = place < 10
            recent = sparse.coo_matrix(
                (
                    np.ones(int(latest_rows.sum())),
                    (interactions.profiles[latest_rows], interactions.items[latest_rows]),
                ),
                shape=shape,
            ).tocsr()
            self.category_share_latest = _row_normalised(sparse.csr_matrix(recent @ categories))

    def window_table(self, window_us: int) -> npt.NDArray[np.float64]:
        """Per day row, each item's interactions in the window of `window_us` (whole
        days, at least one) ending that day; row d ends on day index d - 1."""
        span = max(window_us // scoring.DAY_US, 1)
        table = self._windows.get(span)
        if table is None:
            top = self.cumulative.shape[0] - 1
            ends = np.arange(top + 1)
            table = self.cumulative[ends] - self.cumulative[np.clip(ends - span, 0, top)]
            self._windows[span] = table
        return table

    def window_row(self, profiles: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The row of `window_table` that ends on each profile's latest interaction."""
        day = scoring.DAY_US
        last_day = np.where(
            self.last_us[profiles] >= 0, (self.last_us[profiles] - self.origin) // day, 0
        )
        return np.clip(last_day + 1, 0, self.cumulative.shape[0] - 1)

    def recent_popularity(
        self,
        profiles: npt.NDArray[np.int64],
        window_us: int,
        items: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Per profile (rows), each item's interactions in the window up to its latest;
        with `items`, only each profile's item (pairs)."""
        table = self.window_table(window_us)
        at = self.window_row(profiles)
        return np.asarray(table[at] if items is None else table[at, items])


def _transitions(interactions: scoring.Interactions, lags: int = 3) -> sparse.csr_matrix:
    """Directed item-to-item: how often b follows a within a profile (the k-th next
    counting 1/k), each row scaled to sum 1 (so it reads as 'what comes next')."""
    n = interactions.item_count
    count = len(interactions.items)
    order = np.lexsort((np.arange(count), interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    items = interactions.items[order]
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    for lag in range(1, lags + 1):
        if lag >= count:
            break
        keep = (profiles[:-lag] == profiles[lag:]) & (items[:-lag] != items[lag:])
        rows.append(items[:-lag][keep])
        cols.append(items[lag:][keep])
        values.append(np.full(int(keep.sum()), 1.0 / lag))
    if not rows:
        return sparse.csr_matrix((n, n))
    matrix = sparse.coo_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
    return _row_normalised(matrix)


def _places(interactions: scoring.Interactions) -> npt.NDArray[np.int64]:
    """Each interaction's place among its profile's, latest first, from 0 (time, then
    input order)."""
    count = len(interactions.items)
    place = np.zeros(count, dtype=np.int64)
    if count == 0:
        return place
    order = np.lexsort((-np.arange(count), -interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    starts = np.r_[0, np.flatnonzero(profiles[1:] != profiles[:-1]) + 1]
    place[order] = np.arange(count) - np.repeat(starts, np.diff(np.r_[starts, count]))
    return place


def _row_normalised(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.zeros(len(totals))
    np.divide(1.0, totals, out=scale, where=totals > 0)
    return sparse.csr_matrix(sparse.diags(scale) @ matrix)


def candidates(
    interactions: scoring.Interactions,
    now_us: int,
    settings: scoring.Settings | None = None,
    metadata: ItemMetadata | None = None,
    ranker: RankerSettings | None = None,
    *,
    allow_consumed: bool = False,
    excluded_items: npt.NDArray[np.bool_] | None = None,
    profiles: npt.NDArray[np.int64] | None = None,
    progress: Callable[[float], None] | None = None,
    windowed: sparse.csr_matrix | None = None,
    threads: int = 2,
) -> Candidates:
    """The candidates of the profiles (all by default) and their features. `windowed`:
    ``scoring.cooccurrence`` of the same interactions, instant and settings, when the
    caller has it already. `threads` work on blocks of profiles at once (the result is
    the same for any number)."""
    settings = settings or scoring.Settings()
    ranker = ranker or RankerSettings()
    context = _Context(interactions, now_us, settings, metadata or ItemMetadata(), ranker, windowed)
    chosen = np.arange(interactions.profile_count) if profiles is None else profiles
    orders = _orders(context, excluded_items)
    starts = range(0, len(chosen), ranker.block_profiles)
    parts: list[Candidates | None] = [None] * len(starts)

    def work(start: int) -> None:
        block = chosen[start : start + ranker.block_profiles]
        parts[start // ranker.block_profiles] = _block(context, block, allow_consumed, orders)

    for done in scoring.in_parallel(work, starts, threads):
        if progress is not None:
            progress(min(starts[done] + ranker.block_profiles, len(chosen)) / len(chosen))
    found = [part for part in parts if part is not None]
    if not found:
        return Candidates(
            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, len(FEATURES)))
        )
    return Candidates(
        np.concatenate([p.profiles for p in found]),
        np.concatenate([p.items for p in found]),
        np.concatenate([p.features for p in found]),
    )


SOURCES = (
    "blend",
    "windowed",
    "cosine_history",
    "cosine_latest",
    "next_after_latest_3",
    "popularity_recent_week",
    "popularity",
)


def _sources(
    context: _Context, profiles: npt.NDArray[np.int64]
) -> dict[str, npt.NDArray[np.float64]]:
    """Each candidate source's scores of every item for these profiles (rows)."""
    windowed = _row_scaled((context.history_served[profiles] @ context.windowed).toarray())
    cosine_latest = np.zeros_like(windowed)
    latest = context.latest_item[profiles]
    has_latest = latest >= 0
    if has_latest.any():
        cosine_latest[has_latest] = context.cosine[latest[has_latest]].toarray()
    return {
        "blend": windowed + context.blend_popularity[None, :],
        "windowed": (context.history_decayed[profiles] @ context.windowed).toarray(),
        "cosine_history": (context.binary[profiles] @ context.cosine).toarray(),
        "cosine_latest": cosine_latest,
        "next_after_latest_3": (context.latest3[profiles] @ context.transitions).toarray(),
        "popularity_recent_week": context.recent_popularity(profiles, context.ranker.recent_us),
        "popularity": np.tile(context.popularity, (len(profiles), 1)),
    }


def source_top_n(
    interactions: scoring.Interactions,
    now_us: int,
    size: int,
    profiles: npt.NDArray[np.int64],
    settings: scoring.Settings | None = None,
    ranker: RankerSettings | None = None,
) -> dict[str, npt.NDArray[np.int64]]:
    """Each candidate source alone: the profiles' best `size` unconsumed items
    (rows in `profiles` order), to compare the ranker with its inputs."""
    settings = settings or scoring.Settings()
    ranker = ranker or RankerSettings()
    context = _Context(interactions, now_us, settings, ItemMetadata(), ranker)
    out = {name: np.full((len(profiles), size), -1, dtype=np.int64) for name in SOURCES}
    for start in range(0, len(profiles), ranker.block_profiles):
        chosen = profiles[start : start + ranker.block_profiles]
        consumed = context.binary[chosen].nonzero()
        for name, scores in _sources(context, chosen).items():
            scores = scores.astype(np.float64, copy=True)
            scores[consumed] = -np.inf
            # Best first, ties to the lower item index (stable sort of negated scores).
            order = np.argsort(-scores, axis=1, kind="stable")[:, :size]
            out[name][start : start + len(chosen)] = order
    return out


def _block(
    context: _Context,
    profiles: npt.NDArray[np.int64],
    allow_consumed: bool,
    orders: _Orders,
) -> Candidates:
    ranker = context.ranker
    day = float(scoring.DAY_US)
    n = context.log.item_count
    # The sources that score most items of a row are dense rows; those whose ranking
    # is shared by many profiles (popularity, last week's popularity, the cosine row
    # of the latest item) are read from ranked lists instead, without a dense row or
    # a partition of it (measured: most of the candidate stage before).
    blend = _row_scaled((context.history_served[profiles] @ context.windowed).toarray())
    blend += context.blend_popularity[None, :]
    decayed = (context.history_decayed[profiles] @ context.windowed).toarray()
    cosine_history = (context.binary[profiles] @ context.cosine).toarray()
    next_after_latest_3 = (context.latest3[profiles] @ context.transitions).toarray()
    decayed_share = _row_scaled(decayed)
    cosine_share = _row_scaled(cosine_history)
    binary = context.binary[profiles]
    excluded_items = orders.excluded

    blocked = np.zeros(blend.shape, dtype=bool)
    if not allow_consumed:
        rows, cols = binary.nonzero()
        blocked[rows, cols] = True
    blocked[:, excluded_items] = True

    def masked(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # In place: every derived value is computed above, and the features are only
        # ever read at candidates, which are never blocked.
        values[blocked] = -np.inf
        return values

    chosen = np.zeros(blend.shape, dtype=bool)
    for values, width in (
        (blend, ranker.blend_width),
        (decayed, ranker.windowed_width),
        (cosine_history, ranker.cosine_width),
        (next_after_latest_3, ranker.next_width),
    ):
        chosen[scoring.best_in_rows(masked(values), width, positive=True)] = True
    # A row's best `width` unblocked items of a ranked list lie in its first `width`
    # + (its consumed items) entries (excluded items are not in the lists).
    extra = blocked.sum(axis=1) - int(excluded_items.sum())
    latest = context.latest_item[profiles]
    day_row = context.window_row(profiles)
    for ranked, which, width in (
        (orders.popular, np.zeros(len(profiles), dtype=np.int64), ranker.popular_width),
        (orders.recent_week, day_row, ranker.recent_width),
        (orders.cosine, latest, ranker.latest_width),
    ):
        prefix_rows, prefix_items, prefix_scores = ranked.prefix(which, width + extra)
        free = ~blocked[prefix_rows, prefix_items]
        picked = _best_in_rows(prefix_rows[free], prefix_items[free], prefix_scores[free], width)
        chosen[prefix_rows[free][picked], prefix_items[free][picked]] = True
    rows, items = np.nonzero(chosen)
    # Rank under the blend among the row's candidates (0 best; ties to the lower item).
    order = np.lexsort((items, -blend[rows, items], rows))
    starts = np.r_[0, np.flatnonzero(rows[order][1:] != rows[order][:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    blend_rank = np.empty(len(rows))
    blend_rank[order] = np.arange(len(rows)) - first
    who = profiles[rows]
    # Features that only matter at the candidates are read there from the sparse
    # item-item matrices (the same stored values a dense row would hold).
    latest_at = context.latest_item[who] * n
    cosine_latest = context.cosine_pairs.at(latest_at + items)
    windowed_latest = context.windowed_pairs.at(latest_at + items)
    next_after_latest = context.transition_pairs.at(latest_at + items)
    windowed_latest_3 = (context.latest3[profiles] @ context.windowed).toarray()[rows, items]
    # How recent the latest interaction related to the candidate is: 1 / (1 + place)
    # over the latest ten places (later, i.e. smaller, places win).
    related_recency = np.zeros(len(rows))
    for at in range(context.item_at_place.shape[1] - 1, -1, -1):
        reach = context.windowed_pairs.at(context.item_at_place[who, at] * n + items) != 0
        related_recency[reach] = 1.0 / (1.0 + at)
    recent_day = context.recent_popularity(who, scoring.DAY_US, items)
    last_us = context.last_us[who]
    reference_us = np.where(last_us >= 0, last_us, context.now_us)
    release = context.metadata.release_us
    release_days = (
        np.where(release[items] >= 0, (reference_us - release[items]) / day, np.nan)
        if release is not None
        else np.full(len(rows), np.nan)
    )
    if context.metadata.categories is not None:
        item_categories = context.item_categories[items]
        affinity = np.asarray(
            context.category_share[who].multiply(item_categories).sum(axis=1)
        ).ravel()
        affinity_latest = np.asarray(
            context.category_share_latest[who].multiply(item_categories).sum(axis=1)
        ).ravel()
    else:
        affinity = np.full(len(rows), np.nan)
        affinity_latest = np.full(len(rows), np.nan)
    has_history = last_us >= 0
    columns = [
        blend[rows, items],
        blend_rank,
        decayed[rows, items],
        decayed_share[rows, items],
        cosine_history[rows, items],
        cosine_share[rows, items],
        cosine_latest,
        windowed_latest,
        windowed_latest_3,
        next_after_latest,
        next_after_latest_3[rows, items],
        related_recency,
        np.log1p(context.popularity[items]),
        np.log1p(context.window_table(ranker.recent_us)[day_row[rows], items]),
        np.log1p(recent_day),
        np.log1p(context.popularity_decayed[items]),
        (reference_us - context.first_seen[items]) / day,
        np.where(
            context.last_seen[items] >= 0, (reference_us - context.last_seen[items]) / day, np.nan
        ),
        release_days,
        affinity,
        affinity_latest,
        np.log1p(context.length[who]),
        np.where(has_history, (last_us - context.first_us[who]) / day, np.nan),
        np.where(has_history, (context.now_us - last_us) / day, np.nan),
    ]
    return Candidates(who.astype(np.int64), items.astype(np.int64), np.stack(columns, axis=1))


class _Ranked:
    """Ranked item lists, one per list index (best first, ties to the lower item index),
    concatenated: list j is items[starts[j]:starts[j + 1]] with its scores."""

    def __init__(
        self,
        lists: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float64],
        count: int,
    ) -> None:
        order = np.lexsort((items, -scores, lists))
        self.items = items[order]
        self.scores = scores[order]
        self.starts = np.r_[0, np.cumsum(np.bincount(lists, minlength=count))].astype(np.int64)

    def prefix(
        self, which: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """For each row r, the first `lengths[r]` entries of list `which[r]` (none when
        it is -1): their rows, items and scores."""
        valid = which >= 0
        start = np.where(valid, self.starts[np.maximum(which, 0)], 0)
        available = np.where(valid, self.starts[np.maximum(which, 0) + 1] - start, 0)
        taken = np.minimum(lengths, available)
        rows = np.repeat(np.arange(len(which), dtype=np.int64), taken)
        at = np.repeat(start, taken) + _places_in_rows(rows)
        return rows, self.items[at], self.scores[at]


@dataclass(frozen=True)
class _Orders:
    """Ranked lists shared by the profiles of a candidate stage, excluded items and
    items scoring 0 left out: popularity (one list), last week's popularity (a list per
    row of the window table) and each item's cosine row (a list per item)."""

    excluded: npt.NDArray[np.bool_]
    popular: _Ranked
    recent_week: _Ranked
    cosine: _Ranked


def _orders(context: _Context, excluded_items: npt.NDArray[np.bool_] | None) -> _Orders:
    n = context.log.item_count
    excluded = np.zeros(n, dtype=bool) if excluded_items is None else excluded_items

    def ranked(keys: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], count: int) -> _Ranked:
        keep = (scores > 0) & ~excluded[keys % n]
        return _Ranked(keys[keep] // n, keys[keep] % n, scores[keep], count)

    week = context.window_table(context.ranker.recent_us)
    every = np.arange(n, dtype=np.int64)
    return _Orders(
        excluded,
        ranked(every, context.popularity, 1),
        ranked(np.arange(week.size, dtype=np.int64), week.ravel(), week.shape[0]),
        ranked(context.cosine_pairs.keys, context.cosine_pairs.values, n),
    )


def _best_in_rows(
    rows: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    width: int,
) -> npt.NDArray[np.bool_]:
    """Which of these (row, item) pairs are their row's best `width` finite, positive
    scores (ties to the lower item index)."""
    usable = np.isfinite(scores) & (scores > 0)
    order = np.lexsort((items, -scores, rows))
    order = order[usable[order]]
    picked = np.zeros(len(rows), dtype=bool)
    picked[order[_places_in_rows(rows[order]) < width]] = True
    return picked


def _entries(
    matrix: sparse.spmatrix | sparse.sparray, n_items: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """A sparse matrix's stored entries as (row x n_items + column) keys, ascending,
    and values."""
    matrix = sparse.csr_matrix(matrix)
    if not matrix.has_sorted_indices:
        matrix = matrix.sorted_indices()  # a copy: a shared matrix keeps its layout
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * n_items + matrix.indices.astype(np.int64), np.asarray(matrix.data, np.float64)


class _Lookup:
    """Values of sparse entries by key, read at arbitrary keys (0 where none is stored):
    the same stored values a dense row would hold, without the dense row."""

    def __init__(self, keys: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> None:
        if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            order = np.argsort(keys, kind="stable")
            keys, values = keys[order], values[order]
        self.keys = keys
        self.values = values

    def at(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        out = np.zeros(len(keys))
        if len(self.keys) == 0:
            return out
        place = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[place] == keys
        out[found] = self.values[place[found]]
        return out


def _places_in_rows(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For sorted row ids, each one's place within its row, from 0."""
    count = len(rows)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
    return np.arange(count) - np.repeat(starts, np.diff(np.r_[starts, count]))


def without_last(
    interactions: scoring.Interactions, k: int
) -> tuple[scoring.Interactions, npt.NDArray[np.int64]]:
    """The interactions without each profile's last `k` (profiles with more than k),
    and each profile's next interaction after what is left (-1 for none)."""
    count = len(interactions.items)
    order = np.lexsort((np.arange(count), interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    ends = np.r_[np.flatnonzero(profiles[1:] != profiles[:-1]), count - 1]
    sizes = np.diff(np.r_[-1, ends])
    from_end = np.repeat(ends, sizes) - np.arange(count)  # 0 for each profile's last
    long_enough = np.repeat(sizes, sizes) > k
    dropped = long_enough & (from_end < k)
    target_rows = long_enough & (from_end == k - 1)
    target = np.full(interactions.profile_count, -1, dtype=np.int64)
    target[profiles[target_rows]] = interactions.items[order][target_rows]
    keep = np.ones(count, dtype=bool)
    keep[order[dropped]] = False
    kept = interactions.only(keep)
    return kept, target


def tied_next(interactions: scoring.Interactions, k: int) -> sparse.csr_matrix:
    """Per profile (rows), the items of its last `k` interactions made at the same
    instant as the first of them: interactions recorded together have no real order,
    so each is as much "the next one" as the first."""
    count = len(interactions.items)
    order = np.lexsort((np.arange(count), interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    times = interactions.timestamps_us[order]
    ends = np.r_[np.flatnonzero(profiles[1:] != profiles[:-1]), count - 1]
    sizes = np.diff(np.r_[-1, ends])
    from_end = np.repeat(ends, sizes) - np.arange(count)
    long_enough = np.repeat(sizes, sizes) > k
    dropped = long_enough & (from_end < k)
    first_time = np.full(interactions.profile_count, -1, dtype=np.int64)
    first = long_enough & (from_end == k - 1)
    first_time[profiles[first]] = times[first]
    tied = dropped & (times == first_time[profiles])
    return sparse.csr_matrix(
        (
            np.ones(int(tied.sum())),
            (profiles[tied], interactions.items[order][tied]),
        ),
        shape=(interactions.profile_count, interactions.item_count),
    )


def goal_targets(
    interactions: scoring.Interactions, k: int, goal: npt.NDArray[np.bool_]
) -> tuple[scoring.Interactions, npt.NDArray[np.int64], sparse.csr_matrix]:
    """`without_last` for an object with a goal event (`goal`: which interactions are
    one): for each profile with at least `k` goal interactions, the `k`-th last of
    them is the target and what came before it (by time, then input order) is the
    history; profiles without one keep every interaction and have no target (-1). Goal
    interactions of a profile at one instant (an order of several items) count as one,
    the target being the first of them; the second value holds per profile (rows) the
    items of all of them: each is as much the target as the first."""
    count = len(interactions.items)
    order = np.lexsort((np.arange(count), interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    is_goal = goal[order].astype(np.int64)
    times = interactions.timestamps_us[order]
    starts = np.r_[0, np.flatnonzero(profiles[1:] != profiles[:-1]) + 1] if count else []
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, count]))
    place = np.arange(count) - first_of_group
    # Goal interactions of one profile at one instant are one goal (an order of several
    # items): counted once, at the first of them.
    rows = np.flatnonzero(is_goal)
    starts_instant = np.ones(len(rows), dtype=bool)
    starts_instant[1:] = (profiles[rows][1:] != profiles[rows][:-1]) | (
        times[rows][1:] != times[rows][:-1]
    )
    instant = np.zeros(count, dtype=np.int64)
    instant[rows[starts_instant]] = 1
    so_far = np.cumsum(instant)  # goals up to and including each row, over all rows
    before_group = so_far[first_of_group] - instant[first_of_group]
    total = np.bincount(profiles, weights=instant, minlength=interactions.profile_count)
    from_end = total[profiles].astype(np.int64) - (so_far - before_group) + instant
    cut_rows = (instant == 1) & (from_end == k) & (place > 0)
    cut = np.full(interactions.profile_count, count, dtype=np.int64)
    cut[profiles[cut_rows]] = np.flatnonzero(cut_rows)
    target = np.full(interactions.profile_count, -1, dtype=np.int64)
    target[profiles[cut_rows]] = interactions.items[order][cut_rows]
    dropped = np.arange(count) >= cut[profiles]
    cut_time = np.full(interactions.profile_count, -1, dtype=np.int64)
    cut_time[profiles[cut_rows]] = times[cut_rows]
    tied = dropped & (is_goal == 1) & (times == cut_time[profiles])
    keep = np.ones(count, dtype=bool)
    keep[order[dropped]] = False
    kept = interactions.only(keep)
    ties = sparse.csr_matrix(
        (np.ones(int(tied.sum())), (profiles[tied], interactions.items[order][tied])),
        shape=(interactions.profile_count, interactions.item_count),
    )
    return kept, target, ties


def training_set(
    interactions: scoring.Interactions,
    settings: scoring.Settings | None = None,
    metadata: ItemMetadata | None = None,
    ranker: RankerSettings | None = None,
    ks: range | None = None,
    progress: Callable[[float], None] | None = None,
    *,
    now_us: int | None = None,
    learners: npt.NDArray[np.bool_] | None = None,
    goal: npt.NDArray[np.bool_] | None = None,
    threads: int = 2,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[int]]:
    """Features, labels and group sizes of the earlier next interactions (k in `ks`,
    by default 1..targets), each profile's candidates a group when its target is one.

    Each earlier point in time keeps the gap between the log's last interaction and
    `now_us` (default: just after the last), so features that look at "now" mean the
    same when learning as when ranking. `learners` limits which profiles give
    examples (every profile's rows still build the item-item matrices). With `goal`
    (which interactions are goal events), the targets are earlier next goal
    interactions instead (goal_targets). `threads` build that many targets' examples
    at once (the result is the same for any number)."""
    ranker = ranker or RankerSettings()
    if len(interactions.items) == 0:
        return np.zeros((0, len(FEATURES))), np.zeros(0), []
    last_us = int(interactions.timestamps_us.max())
    gap_us = 1 if now_us is None else max(now_us - last_us, 1)
    steps = list(ks or range(1, ranker.targets + 1))
    features: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.float64]] = []
    groups: list[int] = []
    found_of: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[int]] | None]
    found_of = [None] * len(steps)

    def examples(step: int) -> None:
        k = steps[step]
        if goal is None:
            history, target = without_last(interactions, k)
        else:
            history, target, goal_ties = goal_targets(interactions, k, goal)
        if len(history.items) == 0:
            return
        then_us = int(history.timestamps_us.max()) + gap_us
        wanted = target >= 0
        if learners is not None:
            wanted &= learners
        asked = np.flatnonzero(wanted)
        # One thread per target here: the targets run side by side instead.
        found = candidates(history, then_us, settings, metadata, ranker, profiles=asked, threads=1)
        label = (found.items == target[found.profiles]).astype(np.float64)
        if ranker.tied_positives:
            tied = tied_next(interactions, k) if goal is None else goal_ties
            label = np.maximum(
                label, (np.asarray(tied[found.profiles, found.items]).ravel() > 0).astype(float)
            )
        useful = np.zeros(interactions.profile_count, dtype=bool)
        useful[found.profiles[label > 0]] = True
        keep = useful[found.profiles]
        sizes = np.bincount(found.profiles[keep], minlength=interactions.profile_count)
        found_of[step] = (found.features[keep], label[keep], sizes[useful].tolist())

    # Each target's examples are computed apart (its own context: the log without the
    # last k), so two run at once; they are put together in target order.
    for step in scoring.in_parallel(examples, range(len(steps)), threads):
        if progress is not None:
            progress((step + 1) / len(steps))
    for part in found_of:
        if part is not None:
            features.append(part[0])
            labels.append(part[1])
            groups += part[2]
    if not features:
        return np.zeros((0, len(FEATURES))), np.zeros(0), []
    return np.concatenate(features), np.concatenate(labels), groups


def fit(
    interactions: scoring.Interactions,
    settings: scoring.Settings | None = None,
    seed: int = 7,
    metadata: ItemMetadata | None = None,
    ranker: RankerSettings | None = None,
    threads: int = 1,
) -> lightgbm.Booster | None:
    """A lambdarank model on several earlier next interactions of each profile (None
    when no profile's earlier target is among its candidates)."""
    ranker = ranker or RankerSettings()
    features, labels, groups = training_set(interactions, settings, metadata, ranker)
    if not groups:
        return None
    return _train(features, labels, groups, ranker, seed, threads)


def _train(
    features: npt.NDArray[np.float64],
    labels: npt.NDArray[np.float64],
    groups: list[int],
    knobs: RankerSettings,
    seed: int,
    threads: int,
) -> lightgbm.Booster:
    data = lightgbm.Dataset(
        features, labels, group=groups, feature_name=list(FEATURES), free_raw_data=True
    )
    parameters = {
        **knobs.parameters,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": threads,
        "verbose": -1,
    }
    return lightgbm.train(parameters, data, num_boost_round=knobs.rounds)


def rank(
    model: lightgbm.Booster | None, found: Candidates, profile_count: int, size: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Each profile's best `size` candidates by the ranker (or by the blend without
    one) and their scores (profiles x size, -1 pads)."""
    if model is None:
        scores = found.features[:, FEATURES.index("blend")]
    else:
        scores = np.asarray(model.predict(found.features, num_threads=2), dtype=np.float64)
    # Best first per profile, ties to the lower item index.
    order = np.lexsort((found.items, -scores, found.profiles))
    profiles = found.profiles[order]
    starts = np.r_[0, np.flatnonzero(profiles[1:] != profiles[:-1]) + 1] if len(order) else []
    place = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = place < size
    items = np.full((profile_count, size), -1, dtype=np.int64)
    out_scores = np.zeros((profile_count, size))
    items[profiles[keep], place[keep]] = found.items[order][keep]
    out_scores[profiles[keep], place[keep]] = scores[order][keep]
    return items, out_scores


def _fill_from(
    items: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    blend: scoring.TopN,
    profiles: npt.NDArray[np.int64],
) -> None:
    """Where the ranker had fewer candidates than places, the blend's next items (not
    already listed) fill the rest, below the ranked ones."""
    short = profiles[(items[profiles] < 0).any(axis=1)] if len(profiles) else profiles
    for profile in short.tolist():
        row = items[profile]
        listed = set(row[row >= 0].tolist())
        free = np.flatnonzero(row < 0)
        extra = [i for i in blend.items[profile].tolist() if i >= 0 and i not in listed]
        floor = float(scores[profile][row >= 0].min()) if len(listed) else 1.0
        for place, item in zip(free.tolist(), extra, strict=False):
            row[place] = item
            floor /= 2  # keeps the filled items below the ranked ones, in blend order
            scores[profile, place] = floor


def _blend_rows(blend: scoring.TopN, more: scoring.TopN, profiles: npt.NDArray[np.int64]) -> None:
    """Copy the rows of `profiles` from `more` (scored for them) into `blend`."""
    blend.items[profiles] = more.items[profiles]
    blend.scores[profiles] = more.scores[profiles]


def categories_from_properties(
    metadata: list[dict[str, object]], item_property: str
) -> sparse.csr_matrix | None:
    """Item categories from the items' latest event properties: each text value (or
    each text in a list) of a property is a category `property=value` when at least
    two items share it and not every item has it (ids and titles drop out)."""
    tokens: list[set[str]] = []
    for properties in metadata:
        found: set[str] = set()
        for name, value in properties.items():
            if name == item_property:
                continue
            values = value if isinstance(value, list) else [value]
            found.update(f"{name}={v}" for v in values if isinstance(v, str))
        tokens.append(found)
    counts: dict[str, int] = {}
    for found in tokens:
        for token in found:
            counts[token] = counts.get(token, 0) + 1
    kept = sorted(token for token, n in counts.items() if 2 <= n < len(metadata))
    if not kept:
        return None
    column = {token: at for at, token in enumerate(kept)}
    rows = [item for item, found in enumerate(tokens) for token in found if token in column]
    cols = [column[token] for found in tokens for token in found if token in column]
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(metadata), len(kept)))


def recommend(
    interactions: scoring.Interactions,
    now_us: int,
    size: int,
    settings: scoring.Settings | None = None,
    metadata: ItemMetadata | None = None,
    knobs: RankerSettings | None = None,
    *,
    seed: int = 7,
    allow_consumed: bool = False,
    excluded_items: npt.NDArray[np.bool_] | None = None,
    progress: Callable[[float], None] | None = None,
    goal: npt.NDArray[np.bool_] | None = None,
) -> tuple[scoring.TopN, bool]:
    """Every profile's top `size`: the ranker's for profiles with history when enough
    profiles teach it (`min_groups`), the blend's otherwise, for cold profiles and for
    profiles beyond the ranking budget (`rank_cells`). The second value says whether
    the ranker was used. With `goal` (which interactions are the object's goal
    event) the ranker learns the next goal items; candidates come from every item."""
    settings = settings or scoring.Settings()
    knobs = knobs or RankerSettings()
    knobs = replace(knobs, blend_width=max(knobs.blend_width, size))
    counts = np.bincount(interactions.profiles, minlength=interactions.profile_count)
    active = np.flatnonzero(counts)
    item_count = max(interactions.item_count, 1)
    # Ranking scores ranked x items cells: the most recently active profiles first,
    # the rest keep the blend.
    ranked = active
    most_ranked = max(knobs.rank_cells // item_count, 1)
    if len(active) > most_ranked:
        last_us = np.full(interactions.profile_count, -1, dtype=np.int64)
        np.maximum.at(last_us, interactions.profiles, interactions.timestamps_us)
        latest = active[np.lexsort((active, -last_us[active]))]
        ranked = np.sort(latest[:most_ranked])
    # The blend is scored once per profile: here for the profiles the ranker does not
    # rank (cold ones, those beyond its budget), in the ranker's candidate stage for
    # the others (its first source), and here again only where the ranker's list falls
    # short or the ranker is not used. The item-item matrix is built once for both.
    matrix = scoring.cooccurrence(interactions, now_us, settings)

    def blend_of(profiles: npt.NDArray[np.int64]) -> scoring.TopN:
        return scoring.top_n(
            interactions,
            now_us,
            size,
            settings,
            allow_consumed=allow_consumed,
            excluded_items=excluded_items,
            profiles=profiles,
            item_item=matrix,
        )

    unranked = np.ones(interactions.profile_count, dtype=bool)
    unranked[ranked] = False
    blend = blend_of(np.flatnonzero(unranked))
    if progress is not None:
        progress(0.1)
    # Learning scores targets x learners x items cells: sample learners to the budget.
    most = max(knobs.fit_cells // (knobs.targets * item_count), 1)
    learners = None
    if len(active) > most:
        rng = np.random.default_rng(seed)
        learners = np.zeros(interactions.profile_count, dtype=bool)
        learners[rng.choice(active, most, replace=False)] = True
    learning = None if progress is None else (lambda share: progress(0.1 + 0.4 * share))
    features, labels, groups = training_set(
        interactions,
        settings,
        metadata,
        knobs,
        progress=learning,
        now_us=now_us,
        learners=learners,
        goal=goal,
    )
    if progress is not None:
        progress(0.5)
    if len(groups) < knobs.min_groups:
        _blend_rows(blend, blend_of(ranked), ranked)
        return blend, False
    # One thread: on a shared, loaded machine LightGBM's OpenMP threads spin waiting
    # for each other (measured on the bench's 2,000 learners: one thread 9-11 s of
    # CPU, two 32-47 s, and 3-5 times the wall time). The model is the same with
    # either (deterministic).
    model = _train(features, labels, groups, knobs, seed, threads=1)
    if progress is not None:
        progress(0.6)
    found = candidates(
        interactions,
        now_us,
        settings,
        metadata,
        knobs,
        allow_consumed=allow_consumed,
        excluded_items=excluded_items,
        profiles=ranked,
        progress=None if progress is None else (lambda share: progress(0.6 + 0.4 * share)),
        windowed=matrix,
    )
    items, scores = rank(model, found, interactions.profile_count, size)
    # Served scores in (0, 1), in the ranker's order (a logistic of its score).
    scores = np.where(items >= 0, 1.0 / (1.0 + np.exp(-scores)), 0.0)
    # Cold profiles (no history) keep the blend's popular items.
    out_items = blend.items.copy()
    out_scores = blend.scores.copy()
    out_items[ranked] = items[ranked]
    out_scores[ranked] = scores[ranked]
    # Where the ranker's list falls short, the blend's next items fill it.
    short = ranked[(items[ranked] < 0).any(axis=1)] if len(ranked) else ranked
    if len(short):
        _blend_rows(blend, blend_of(short), short)
    _fill_from(out_items, out_scores, blend, ranked)
    if progress is not None:
        progress(1.0)
    return scoring.TopN(out_items, out_scores), True
