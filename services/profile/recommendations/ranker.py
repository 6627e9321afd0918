"""A LightGBM lambdarank ranker over the model's candidates (offline evaluation only).

Candidates: each profile's top `CANDIDATES` items of the served blend
(scoring.top_n). Features of a (profile, candidate) pair: the blend's score and rank,
windowed co-occurrence with the whole history, cosine with the whole history, both
with the profile's latest item, the item's popularity, age and last-seen recency, and
the profile's history length. Training targets are several earlier next interactions
per profile: with the last `k` interactions removed (k = 1..TARGETS), the next one is
the label; the ranker never sees the evaluation's held-out interactions.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm
import numpy as np
import numpy.typing as npt
from scipy import sparse

from services.profile.recommendations import scoring

CANDIDATES = 50
TARGETS = 3


@dataclass(frozen=True)
class Candidates:
    """Per profile: candidate items (-1 pads) and their features (profile x cand x f)."""

    items: npt.NDArray[np.int64]
    features: npt.NDArray[np.float64]


def _gather(
    matrix: sparse.csr_matrix, rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    return np.asarray(matrix[rows, cols]).ravel().astype(np.float64)


def candidates(
    interactions: scoring.Interactions, now_us: int, settings: scoring.Settings
) -> Candidates:
    """The candidates of every profile and their features."""
    top = scoring.top_n(interactions, now_us, CANDIDATES, settings)
    n_profiles, width = top.items.shape
    windowed = scoring.cooccurrence(interactions, now_us, settings)
    cosine = scoring.cooccurrence(interactions, now_us, scoring.Settings(session_window_us=None))
    shape = (n_profiles, interactions.item_count)
    had = sparse.coo_matrix(
        (interactions.weights, (interactions.profiles, interactions.items)), shape=shape
    ).tocsr()
    had_binary = had.copy()
    had_binary.data[:] = 1.0
    related = sparse.csr_matrix(had @ windowed)
    similar = sparse.csr_matrix(had_binary @ cosine)
    # Each profile's latest item (time, then input order); -1 when it has none.
    order = np.lexsort(
        (np.arange(len(interactions.items)), interactions.timestamps_us, interactions.profiles)
    )
    last_item = np.full(n_profiles, -1, dtype=np.int64)
    last_item[interactions.profiles[order]] = interactions.items[order]
    popularity = np.bincount(interactions.items, minlength=interactions.item_count).astype(
        np.float64
    )
    first_seen = np.full(interactions.item_count, now_us, dtype=np.int64)
    np.minimum.at(first_seen, interactions.items, interactions.timestamps_us)
    last_seen = np.zeros(interactions.item_count, dtype=np.int64)
    np.maximum.at(last_seen, interactions.items, interactions.timestamps_us)
    length = np.bincount(interactions.profiles, minlength=n_profiles).astype(np.float64)

    rows = np.repeat(np.arange(n_profiles), width)
    items = top.items.ravel()
    valid = items >= 0
    safe = np.where(valid, items, 0)
    last = np.repeat(last_item, width)
    has_last = last >= 0
    safe_last = np.where(has_last, last, 0)
    day = float(scoring.DAY_US)
    columns = [
        top.scores.ravel(),
        np.tile(np.arange(width, dtype=np.float64), n_profiles),
        _gather(related, rows, safe),
        _gather(similar, rows, safe),
        np.where(has_last, _gather(windowed, safe_last, safe), 0.0),
        np.where(has_last, _gather(cosine, safe_last, safe), 0.0),
        np.log1p(popularity[safe]),
        (now_us - first_seen[safe]) / day,
        (now_us - last_seen[safe]) / day,
        np.log1p(length[rows]),
    ]
    features = np.where(valid[:, None], np.stack(columns, axis=1), np.nan)
    return Candidates(top.items, features.reshape(n_profiles, width, len(columns)))


def _without_last(
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
    kept = scoring.Interactions(
        interactions.profiles[keep],
        interactions.items[keep],
        interactions.weights[keep],
        interactions.timestamps_us[keep],
        interactions.profile_count,
        interactions.item_count,
    )
    return kept, target


def fit(
    interactions: scoring.Interactions, settings: scoring.Settings, seed: int = 7
) -> lightgbm.Booster:
    """A lambdarank model on several earlier next interactions of each profile."""
    features: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.float64]] = []
    groups: list[int] = []
    for k in range(1, TARGETS + 1):
        history, target = _without_last(interactions, k)
        now_us = int(history.timestamps_us.max()) + 1
        found = candidates(history, now_us, settings)
        # Only profiles whose target is among the candidates teach the ranking.
        hit = (found.items == target[:, None]) & (target[:, None] >= 0)
        useful = hit.any(axis=1)
        for profile in np.flatnonzero(useful):
            valid = found.items[profile] >= 0
            features.append(found.features[profile][valid])
            labels.append(hit[profile][valid].astype(np.float64))
            groups.append(int(valid.sum()))
    data = lightgbm.Dataset(np.concatenate(features), np.concatenate(labels), group=groups)
    parameters = {
        "objective": "lambdarank",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbose": -1,
    }
    model = lightgbm.train(parameters, data, num_boost_round=200)
    return model


def rank(model: lightgbm.Booster, found: Candidates, size: int) -> npt.NDArray[np.int64]:
    """Each profile's best `size` candidates by the ranker (-1 pads)."""
    n_profiles, width, n_features = found.features.shape
    flat = np.asarray(model.predict(found.features.reshape(-1, n_features)))
    scores = flat.reshape(n_profiles, width)
    scores = np.where(found.items >= 0, scores, -np.inf)
    order = np.lexsort((found.items, -scores), axis=1)[:, :size]
    return np.take_along_axis(found.items, order, axis=1)
