"""Offline evaluation: leave-last-out HR@10 and NDCG@10 of the model's variants.

Each profile's last interaction (by time, then input order) is held out; every
variant is fitted on the rest only (nothing about a held-out item is used), asked for
10 items with consumed ones excluded, and scored on whether (HR) and how high (NDCG)
the held-out item comes. Profiles with fewer than two interactions are not evaluated
(their rows still feed the model).

    python -m services.profile.recommendations.evaluate                  # synthetic data
    python -m services.profile.recommendations.evaluate --inter FILE     # RecBole .inter
    python -m services.profile.recommendations.evaluate --inter FILE --ranker
    python -m services.profile.recommendations.evaluate --sample-users 500 --seed 3
    python -m services.profile.recommendations.evaluate --inter FILE --eval-users IDS
    python -m services.profile.recommendations.evaluate --inter FILE --ranker --validation

`--inter` reads a RecBole atomic file (tab-separated, header
``user_id:token item_id:token rating:float timestamp:float``), e.g. MovieLens 100K
(see docs/recommendations.md); with `--ranker` the `.item` file beside it gives
categories and release years. `--sample-users` or `--eval-users` (a file of user ids)
evaluate a subset of the profiles (any split: the others' histories still train the
model). `--validation` drops each profile's last interaction first, so knobs are
compared on the second-to-last, never on the held-out ones.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import sparse

from services.profile.recommendations import scoring

if TYPE_CHECKING:
    from services.profile.recommendations.ranker import ItemMetadata, RankerSettings

K = 10
SECOND_US = 1_000_000


@dataclass(frozen=True)
class Result:
    """One variant's figures."""

    name: str
    hit_rate: float
    ndcg: float | None  # None: a recall line, not a ranking
    evaluated: int


VARIANTS: dict[str, scoring.Settings] = {
    "popularity": scoring.Settings(use_cooccurrence=False, time_decay=False),
    "co-occurrence (cosine, whole history)": scoring.Settings(
        session_window_us=None,
        time_decay=False,
        popularity_weight=0.0,
        profile_half_life_interactions=None,
    ),
    "co-occurrence (1-day window, time-decayed, + popularity)": scoring.Settings(
        profile_half_life_interactions=None
    ),
    "the same, the profile's latest interactions first (what training uses)": (scoring.Settings()),
}


def _log(
    profiles: npt.NDArray[np.integer],
    items: npt.NDArray[np.integer],
    times: npt.NDArray[np.integer],
    profile_count: int,
    item_count: int,
) -> scoring.Interactions:
    # Evaluation counts every interaction alike (weight 1), as the reference figures do.
    return scoring.Interactions(
        profiles.astype(np.int64),
        items.astype(np.int64),
        np.ones(len(items)),
        times.astype(np.int64),
        profile_count,
        item_count,
    )


def synthetic(users: int, items: int, seed: int) -> scoring.Interactions:
    """Shoppers in taste clusters: sessions of a few items, mostly from their cluster's
    catalogue (skewed), sometimes a globally popular one; sessions days apart."""
    rng = np.random.default_rng(seed)
    clusters = 20
    cluster_of_item = rng.integers(0, clusters, items)
    by_cluster = [np.flatnonzero(cluster_of_item == c) for c in range(clusters)]
    global_weights = 1.0 / np.arange(1, items + 1)
    global_weights /= global_weights.sum()
    profiles: list[int] = []
    chosen: list[int] = []
    times: list[int] = []
    start = 1_700_000_000 * SECOND_US
    for user in range(users):
        taste = rng.integers(0, clusters)
        pool = by_cluster[taste] if len(by_cluster[taste]) else np.arange(items)
        pool_weights = 1.0 / np.arange(1, len(pool) + 1)
        pool_weights /= pool_weights.sum()
        at = start + int(rng.integers(0, 30)) * 86_400 * SECOND_US
        for _ in range(int(rng.integers(2, 7))):
            for _ in range(int(rng.integers(2, 5))):
                if rng.random() < 0.8:
                    item = int(rng.choice(pool, p=pool_weights))
                else:
                    item = int(rng.choice(items, p=global_weights))
                profiles.append(user)
                chosen.append(item)
                times.append(at)
                at += int(rng.integers(30, 600)) * SECOND_US
            at += int(rng.integers(1, 10)) * 86_400 * SECOND_US
    return _log(np.array(profiles), np.array(chosen), np.array(times), users, items)


def read_inter(path: Path) -> tuple[scoring.Interactions, list[str], list[str]]:
    """A RecBole .inter file (user, item, rating, timestamp in seconds), the item ids
    and the user ids by index."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    with path.open(newline="") as file:
        rows = csv.reader(file, delimiter="\t")
        header = [name.split(":")[0] for name in next(rows)]
        user_at, item_at, time_at = (header.index(n) for n in ("user_id", "item_id", "timestamp"))
        for row in rows:
            users.append(row[user_at])
            items.append(row[item_at])
            times.append(int(float(row[time_at]) * SECOND_US))
    user_ids, profiles = np.unique(np.array(users), return_inverse=True)
    item_ids, item_index = np.unique(np.array(items), return_inverse=True)
    log = _log(profiles, item_index, np.array(times), len(user_ids), len(item_ids))
    return log, [str(item) for item in item_ids], [str(user) for user in user_ids]


def leave_last_out(
    log: scoring.Interactions,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Which rows are held out (each profile's last, if it has two or more) and each
    profile's held-out item (-1 for none)."""
    rows = np.arange(len(log.items))
    order = np.lexsort((rows, log.timestamps_us, log.profiles))
    profiles = log.profiles[order]
    last = np.r_[profiles[1:] != profiles[:-1], True]
    counts = np.bincount(log.profiles, minlength=log.profile_count)
    last &= counts[profiles] >= 2
    held = np.zeros(len(rows), dtype=bool)
    held[order[last]] = True
    target = np.full(log.profile_count, -1, dtype=np.int64)
    target[log.profiles[held]] = log.items[held]
    return held, target


def evaluate(
    log: scoring.Interactions,
    variants: dict[str, scoring.Settings] | None = None,
    evaluated_users: npt.NDArray[np.bool_] | None = None,
) -> list[Result]:
    """HR@10 and NDCG@10 of each variant on `log` (leave-last-out)."""
    held, target = leave_last_out(log)
    if evaluated_users is not None:
        target = np.where(evaluated_users, target, -1)
    keep = ~held
    train = log.only(keep)
    now_us = int(train.timestamps_us.max()) + 1 if len(train.items) else 0
    asked = target >= 0
    results = []
    for name, settings in (variants or VARIANTS).items():
        top = scoring.top_n(train, now_us, K, settings)
        hits = top.items[asked] == target[asked][:, None]
        found = hits.any(axis=1)
        rank = hits.argmax(axis=1)
        gains = np.where(found, 1.0 / np.log2(rank + 2.0), 0.0)
        results.append(Result(name, float(found.mean()), float(gains.mean()), int(asked.sum())))
    return results


def read_items(path: Path, item_ids: Sequence[str]) -> ItemMetadata:
    """A RecBole .item file's categories (`class`) and release year, in `item_ids`'
    index order (items the file lacks have neither)."""
    from services.profile.recommendations import ranker

    index = {item: at for at, item in enumerate(item_ids)}
    names: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    release = np.full(len(item_ids), -1, dtype=np.int64)
    with path.open(newline="") as file:
        lines = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [name.split(":")[0] for name in next(lines)]
        item_at = header.index("item_id")
        class_at = header.index("class") if "class" in header else None
        year_at = header.index("release_year") if "release_year" in header else None
        for line in lines:
            at = index.get(line[item_at])
            if at is None:
                continue
            if class_at is not None and class_at < len(line):
                for name in line[class_at].split():
                    rows.append(at)
                    cols.append(names.setdefault(name, len(names)))
            if year_at is not None and year_at < len(line) and line[year_at].isdigit():
                year = int(line[year_at])
                # Mid-year: the file gives the year only.
                release[at] = int(
                    (np.datetime64(f"{year}-07-01") - np.datetime64("1970-01-01"))
                    / np.timedelta64(1, "us")
                )
    categories = sparse.coo_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(item_ids), max(len(names), 1))
    ).tocsr()
    categories.data[:] = 1.0
    return ranker.ItemMetadata(categories=categories, release_us=release)


def evaluate_ranker(
    log: scoring.Interactions,
    seed: int = 7,
    metadata: ItemMetadata | None = None,
    evaluated_users: npt.NDArray[np.bool_] | None = None,
    threads: int = 1,
    knobs: RankerSettings | None = None,
) -> list[Result]:
    """HR@10 and NDCG@10 of the LightGBM ranker over its candidates, and how often
    the held-out item is among the candidates at all (their recall)."""
    from services.profile.recommendations import ranker  # LightGBM: only when asked

    held, target = leave_last_out(log)
    if evaluated_users is not None:
        target = np.where(evaluated_users, target, -1)
    train = log.only(~held)
    settings = scoring.Settings()
    model = ranker.fit(train, settings, seed, metadata, knobs, threads=threads)
    now_us = int(train.timestamps_us.max()) + 1
    asked = np.flatnonzero(target >= 0)
    found = ranker.candidates(train, now_us, settings, metadata, knobs, profiles=asked)
    top, _ = ranker.rank(model, found, log.profile_count, K)
    inputs = ranker.source_top_n(train, now_us, K, asked, settings, knobs)
    results = []
    for name, chosen in inputs.items():
        source_top = np.full((log.profile_count, K), -1, dtype=np.int64)
        source_top[asked] = chosen
        results.append(_figures(f"  ranker input alone: {name}", source_top, target))
    recall = np.zeros(log.profile_count, dtype=bool)
    recall[found.profiles[found.items == target[found.profiles]]] = True
    width = np.bincount(found.profiles, minlength=log.profile_count)[asked].mean()
    return [
        *results,
        _figures("LightGBM lambdarank over the candidates", top, target),
        Result(
            f"  (candidate recall: held-out item among ~{width:.0f} candidates)",
            float(recall[asked].mean()),
            None,
            len(asked),
        ),
    ]


def _figures(name: str, top: npt.NDArray[np.int64], target: npt.NDArray[np.int64]) -> Result:
    asked = target >= 0
    hits = top[asked] == target[asked][:, None]
    found = hits.any(axis=1)
    gains = np.where(found, 1.0 / np.log2(hits.argmax(axis=1) + 2.0), 0.0)
    return Result(name, float(found.mean()), float(gains.mean()), int(asked.sum()))


def split(
    options: argparse.Namespace, user_ids: Sequence[str], profile_count: int
) -> npt.NDArray[np.bool_] | None:
    """The evaluated profiles: those named in `--eval-users`, or `--sample-users` drawn
    with `--seed`, or all (None)."""
    if options.eval_users:
        wanted = set(options.eval_users.read_text().split())
        return np.array([user in wanted for user in user_ids], dtype=bool)
    if options.sample_users:
        rng = np.random.default_rng(options.seed)
        subset = np.zeros(profile_count, dtype=bool)
        subset[rng.choice(profile_count, options.sample_users, replace=False)] = True
        return subset
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation and print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inter", type=Path, help="a RecBole .inter file (else synthetic)")
    parser.add_argument("--users", type=int, default=2000, help="synthetic profiles")
    parser.add_argument("--item-count", type=int, default=1000, help="synthetic items")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample-users", type=int, help="evaluate this many profiles only")
    parser.add_argument("--ranker", action="store_true", help="also the LightGBM ranker")
    parser.add_argument("--items", type=Path, help="a RecBole .item file (default: beside --inter)")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="drop each profile's last interaction first, so the second-to-last is the "
        "target: how the knobs are chosen without touching the held-out items",
    )
    parser.add_argument("--targets", type=int, help="ranker: earlier targets per profile")
    parser.add_argument("--next-width", type=int, help="ranker: candidates from transitions")
    parser.add_argument(
        "--tied-positives",
        choices=("on", "off"),
        help="ranker: items recorded at the same instant as the next one are next too",
    )
    parser.add_argument(
        "--eval-users",
        type=Path,
        help="a file of user ids (one a line): evaluate these only (the rest still train)",
    )
    parser.add_argument(
        "--session-hours", type=float, help="session window of the windowed variant"
    )
    options = parser.parse_args(argv)
    item_ids: list[str] = []
    user_ids: list[str] = [str(user) for user in range(options.users)]
    if options.inter:
        log, item_ids, user_ids = read_inter(options.inter)
    else:
        log = synthetic(options.users, options.item_count, options.seed)
    if options.validation:
        held, _ = leave_last_out(log)
        log = log.only(~held)
    subset = split(options, user_ids, log.profile_count)
    variants = dict(VARIANTS)
    if options.session_hours is not None:
        name = list(variants)[-1]
        window = int(options.session_hours * 3600 * SECOND_US)
        variants[name] = replace(variants[name], session_window_us=window)
    source = options.inter.name if options.inter else f"synthetic seed {options.seed}"
    print(
        f"{source}: {log.profile_count} profiles, {log.item_count} items, "
        f"{len(log.items)} interactions; leave-last-out, consumed excluded"
    )
    results = evaluate(log, variants, subset)
    if options.ranker:
        from services.profile.recommendations import ranker

        metadata = None
        items_file = options.items or (
            options.inter.with_suffix(".item") if options.inter else None
        )
        if options.inter and items_file and items_file.exists():
            metadata = read_items(items_file, item_ids)
        knobs = ranker.RankerSettings()
        if options.targets is not None:
            knobs = replace(knobs, targets=options.targets)
        if options.next_width is not None:
            knobs = replace(knobs, next_width=options.next_width)
        if options.tied_positives is not None:
            knobs = replace(knobs, tied_positives=options.tied_positives == "on")
        results += evaluate_ranker(log, options.seed, metadata, subset, options.threads, knobs)
    for result in results:
        ndcg = "  -  " if result.ndcg is None else f"{result.ndcg:.3f}"
        print(
            f"{result.name:72s} HR@10 {result.hit_rate:.3f}  NDCG@10 {ndcg}"
            f"  ({result.evaluated} profiles)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
