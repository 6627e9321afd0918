"""The recommendation model: item-item co-occurrence and popularity, set-based.

Everything here is whole-array NumPy/SciPy work over one workspace's interactions
(profile index, item index, weight, time); nothing loops per profile-item pair.

- Popularity: each item's weighted, time-decayed interactions.
- Co-occurrence: two interactions of one profile at most `session_window_us` apart
  (looking up to `max_lag` interactions ahead) make a pair; a pair counts by the
  recency of its later interaction (half-life `half_life_us`), so old habits fade.
  The item-item matrix is normalised by the square roots of the items' totals
  (cosine-like), so a popular item does not co-occur with everything.
  With no session window, the plain item-item cosine over whole histories instead.
- A profile's scores: its interactions (weighted, decayed, and the k-th latest of its
  own counting 0.5 ** (k / profile_half_life_interactions)) times the item-item matrix,
  scaled to at most 1 per profile, plus `popularity_weight` x popularity (scaled to at
  most 1), which ranks items no co-occurrence reaches and gives cold profiles (no
  interactions) the popular items.
Items the profile interacted with are left out unless allowed, excluded items always;
ties go to the lower item index (`best_in_rows`), so the result is a pure function of
the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse

DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Interactions:
    """One workspace's item interactions as parallel arrays (indices, not ids)."""

    profiles: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    timestamps_us: npt.NDArray[np.int64]
    profile_count: int
    item_count: int

    def only(self, keep: npt.NDArray[np.bool_]) -> Interactions:
        """The interactions where `keep` is true (same profile and item index spaces)."""
        return Interactions(
            self.profiles[keep],
            self.items[keep],
            self.weights[keep],
            self.timestamps_us[keep],
            self.profile_count,
            self.item_count,
        )


@dataclass(frozen=True)
class Settings:
    """The model's knobs (their defaults are what training uses)."""

    # None: every pair of a profile's items co-occurs (whole history), scored as the
    # plain item-item cosine of the binary profile x item matrix (the textbook baseline).
    session_window_us: int | None = DAY_US
    half_life_us: int = 90 * DAY_US
    max_lag: int = 10
    popularity_weight: float = 0.05
    use_cooccurrence: bool = True
    # A profile's interactions count by how recent they are among its own: the k-th
    # latest weighs 0.5 ** (k / this). None: all count alike (but for time decay).
    profile_half_life_interactions: float | None = 5.0
    time_decay: bool = True
    # Profiles scored per dense block: bounds memory at block x items doubles.
    block_profiles: int = 1024


@dataclass(frozen=True)
class TopN:
    """Per profile (row), the recommended item indices and scores, best first; -1 pads."""

    items: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]


def recency(interactions: Interactions, now_us: int, settings: Settings) -> npt.NDArray[np.float64]:
    if not settings.time_decay:
        return np.ones(len(interactions.items))
    age = np.maximum(now_us - interactions.timestamps_us, 0).astype(np.float64)
    return np.power(0.5, age / settings.half_life_us)


def popularity(
    interactions: Interactions, now_us: int, settings: Settings
) -> npt.NDArray[np.float64]:
    """Each item's weighted, decayed interaction total."""
    values = interactions.weights * recency(interactions, now_us, settings)
    counts = np.bincount(interactions.items, weights=values, minlength=interactions.item_count)
    return counts.astype(np.float64)


def cooccurrence(interactions: Interactions, now_us: int, settings: Settings) -> sparse.csr_matrix:
    """The symmetric, normalised item-item matrix of in-session pairs."""
    if settings.session_window_us is None:
        return _cosine(interactions)
    window = settings.session_window_us
    order = np.lexsort((interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    items = interactions.items[order]
    times = interactions.timestamps_us[order]
    decay = recency(interactions, now_us, settings)[order]
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    # One vectorised pass per lag: pairs (i, i + lag) of the same profile in the window.
    for lag in range(1, settings.max_lag + 1):
        if lag >= len(items):
            break
        keep = (
            (profiles[:-lag] == profiles[lag:])
            & (times[lag:] - times[:-lag] <= window)
            & (items[:-lag] != items[lag:])
        )
        first, second = items[:-lag][keep], items[lag:][keep]
        weight = decay[lag:][keep]
        rows += [first, second]
        cols += [second, first]
        values += [weight, weight]
    n = interactions.item_count
    if not rows:
        return sparse.csr_matrix((n, n))
    matrix = sparse.coo_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.zeros(n)
    np.divide(1.0, np.sqrt(totals), out=scale, where=totals > 0)
    return sparse.csr_matrix(sparse.diags(scale) @ matrix @ sparse.diags(scale))


def _cosine(interactions: Interactions) -> sparse.csr_matrix:
    shape = (interactions.profile_count, interactions.item_count)
    had = sparse.coo_matrix(
        (np.ones(len(interactions.items)), (interactions.profiles, interactions.items)), shape=shape
    ).tocsr()
    had.data[:] = 1.0  # duplicates summed above: one profile counts once per item
    matrix = sparse.csr_matrix(had.T @ had)
    matrix.setdiag(0.0)
    matrix.eliminate_zeros()
    counts = np.asarray(had.sum(axis=0)).ravel()
    scale = np.zeros(len(counts))
    np.divide(1.0, np.sqrt(counts), out=scale, where=counts > 0)
    return sparse.csr_matrix(sparse.diags(scale) @ matrix @ sparse.diags(scale))


def latest_first(interactions: Interactions, settings: Settings) -> npt.NDArray[np.float64]:
    half_life = settings.profile_half_life_interactions
    count = len(interactions.items)
    if half_life is None or count == 0:
        return np.ones(count)
    # Latest first within each profile (time, then input order), ranked from 0.
    order = np.lexsort((-np.arange(count), -interactions.timestamps_us, interactions.profiles))
    profiles = interactions.profiles[order]
    starts = np.r_[0, np.flatnonzero(profiles[1:] != profiles[:-1]) + 1]
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, count]))
    rank = np.empty(count)
    rank[order] = np.arange(count) - first_of_group
    return np.power(0.5, rank / half_life)


def scaled(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    peak = values.max() if values.size else 0.0
    return values / peak if peak > 0 else values


def top_n(
    interactions: Interactions,
    now_us: int,
    size: int,
    settings: Settings | None = None,
    *,
    allow_consumed: bool = False,
    excluded_items: npt.NDArray[np.bool_] | None = None,
    progress: Callable[[float], None] | None = None,
    profiles: npt.NDArray[np.int64] | None = None,
    item_item: sparse.csr_matrix | None = None,
    threads: int = 2,
) -> TopN:
    """The best `size` items of every profile (cold ones included: popularity); with
    `profiles`, of those only (the other rows are left empty: -1), each
    row exactly as without. `item_item`: ``cooccurrence`` of the same interactions,
    instant and settings, when the caller has it already. `threads` score blocks of
    profiles at once (the result is the same for any number)."""
    settings = settings or Settings()
    n_profiles, n_items = interactions.profile_count, interactions.item_count
    size = min(size, n_items)
    decay = recency(interactions, now_us, settings) * latest_first(interactions, settings)
    history = sparse.coo_matrix(
        (interactions.weights * decay, (interactions.profiles, interactions.items)),
        shape=(n_profiles, n_items),
    ).tocsr()
    pop = settings.popularity_weight * scaled(popularity(interactions, now_us, settings))
    if not settings.use_cooccurrence:
        item_item = None
    elif item_item is None:
        item_item = cooccurrence(interactions, now_us, settings)
    if not settings.use_cooccurrence:
        pop = scaled(pop)
    blocked = np.zeros(n_items, dtype=bool) if excluded_items is None else excluded_items
    out_items = np.full((n_profiles, size), -1, dtype=np.int64)
    out_scores = np.zeros((n_profiles, size))
    if size == 0:
        return TopN(out_items, out_scores)
    wanted = n_profiles if profiles is None else len(profiles)

    def score(start: int) -> None:
        stop = min(start + settings.block_profiles, wanted)
        # Rows are scored independently: a row of the chosen profiles' block is the
        # same row as in a block of consecutive profiles.
        targets = np.arange(start, stop) if profiles is None else profiles[start:stop]
        block = history[targets]
        if item_item is not None:
            scores = (block @ item_item).toarray()
            peaks = scores.max(axis=1, initial=0.0)
            np.divide(scores, peaks[:, None], out=scores, where=peaks[:, None] > 0)
            scores += pop  # the same sums as popularity plus the scaled row
        else:
            scores = np.tile(pop, (stop - start, 1))
        if not allow_consumed:
            rows, cols = block.nonzero()
            scores[rows, cols] = -np.inf
        scores[:, blocked] = -np.inf
        rows, cols = best_in_rows(scores, size)
        place = np.arange(len(rows)) - np.searchsorted(rows, rows)
        # Blocks write disjoint rows, so they may run in parallel.
        out_items[targets[rows], place] = cols
        out_scores[targets[rows], place] = scores[rows, cols]

    starts = range(0, wanted, settings.block_profiles)
    for done in in_parallel(score, starts, threads):
        if progress is not None:
            progress(min(starts[done] + settings.block_profiles, wanted) / wanted)
    return TopN(out_items, out_scores)


def popular_top_n(
    interactions: Interactions,
    now_us: int,
    size: int,
    settings: Settings | None = None,
    *,
    excluded_items: npt.NDArray[np.bool_] | None = None,
) -> TopN:
    """The items `top_n` gives a profile without interactions (one row): popularity
    alone, excluded items left out, chosen the same way (the same ties), so the
    workspace's popular list is what a cold profile got at training."""
    settings = settings or Settings()
    n_items = interactions.item_count
    size = min(size, n_items)
    pop = settings.popularity_weight * scaled(popularity(interactions, now_us, settings))
    if not settings.use_cooccurrence:
        pop = scaled(pop)
    scores = pop[None, :].copy()
    if excluded_items is not None:
        scores[:, excluded_items] = -np.inf
    if size == 0:
        return TopN(np.full((1, 0), -1, dtype=np.int64), np.zeros((1, 0)))
    _rows, cols = best_in_rows(scores, size)
    items = np.full((1, size), -1, dtype=np.int64)
    chosen = np.zeros((1, size))
    items[0, : len(cols)] = cols
    chosen[0, : len(cols)] = scores[0, cols]
    return TopN(items, chosen)


def best_in_rows(
    scores: npt.NDArray[np.float64], width: int, *, positive: bool = False
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each row's best `width` finite scores (positive ones only with `positive`), as
    (row, column) pairs ordered by row, then best first, ties to the lower column.

    Only a few columns of a row can be among its best: the width-th largest of the
    maxima of 2 x width chunks of the row is at most the row's width-th largest, so
    the columns scoring at least that (a comparison over the row) are the only ones
    sorted. Several times faster than a partition of every row, which slows down
    badly on rows with many equal values (zeros, blocked items)."""
    count, n = scores.shape
    width = min(width, n)
    if width <= 0 or count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Unusable scores are -inf (blocked) or, with `positive`, at most 0: a floor of
    # the smallest positive double leaves those out in the same comparison.
    floor = np.full(count, np.nextafter(0.0, 1.0) if positive else -np.inf)
    chunk = max(n // (2 * width), 1)
    if chunk > 1:
        maxima = np.maximum.reduceat(scores, np.arange(0, n, chunk), axis=1)
        np.maximum(
            floor, np.partition(maxima, maxima.shape[1] - width, axis=1)[:, -width], out=floor
        )
    usable = scores >= floor[:, None]
    rows, cols = np.nonzero(usable)
    values = scores[rows, cols]
    finite = np.isfinite(values)  # a floor of -inf lets -inf through
    rows, cols, values = rows[finite], cols[finite], values[finite]
    order = np.lexsort((cols, -values, rows))
    rows, cols = rows[order], cols[order]
    starts = (
        np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
        if len(rows)
        else np.zeros(0, dtype=np.int64)
    )
    place = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = place < width
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def in_parallel(work: Callable[[int], None], jobs: Sequence[int], threads: int) -> Iterator[int]:
    """Runs `work` on each job on up to `threads` threads (NumPy and SciPy's sparse
    products release the GIL in their loops, so blocks of profiles use both cores),
    yielding each job's index in order as it is done; an error is raised here."""
    if threads <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            work(job)
            yield index
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(work, job) for job in jobs]
        for index, future in enumerate(futures):
            future.result()
            yield index
