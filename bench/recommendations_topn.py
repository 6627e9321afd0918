"""Top-N generation of the recommendation model for many profiles, and writing the
lists to the hot state.

    .venv/bin/python bench/recommendations_topn.py --profiles 100000 --items 10000 \
        --interactions 1000000 [--ranker] [--redis redis://127.0.0.1:6379/N]

Interactions are synthetic: profiles uniform, items Zipf-skewed (exponent 1.3), times
over 30 days. Times the item-item matrix and the blend's scoring of every profile
(top 10, the baseline every ratio is taken against); with --ranker, what training
runs (ranker.recommend: the blend, the ranker's examples from its sampled profiles,
the LightGBM fit, candidates and ranking of the profiles its budget allows); with
--redis, building and writing the 100k lists (10 items each, with metadata) through
the same writer training uses. The Redis database is flushed first: give it one of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.profile.recommendations import scoring
from services.profile.recommendations.hotwrite import RecommendationWriter
from services.shared.redis import create_redis


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--redis", help="a Redis URL to write the lists to (flushed)")
    parser.add_argument(
        "--ranker", action="store_true", help="also time training the ranker and ranking"
    )
    parser.add_argument(
        "--save", help="write the blend's and the ranker's top lists to this .npz file"
    )
    options = parser.parse_args()
    rng = np.random.default_rng(1)
    count = options.interactions
    data = scoring.Interactions(
        profiles=np.sort(rng.integers(0, options.profiles, count)),
        items=((rng.zipf(1.3, count) - 1) % options.items).astype(np.int64),
        weights=np.ones(count),
        timestamps_us=rng.integers(0, 30 * 86_400, count) * 1_000_000 + 1_700_000_000_000_000,
        profile_count=options.profiles,
        item_count=options.items,
    )
    now_us = int(data.timestamps_us.max()) + 1
    rows: list[tuple[str, float]] = []
    started = time.perf_counter()
    matrix = scoring.cooccurrence(data, now_us, scoring.Settings())
    rows.append((f"item-item matrix ({matrix.nnz} entries)", time.perf_counter() - started))
    started = time.perf_counter()
    top = scoring.top_n(data, now_us, options.size)
    blend_s = time.perf_counter() - started
    rows.append((f"blend: top {options.size} of every profile (the baseline)", blend_s))
    saved: dict[str, np.ndarray] = {"blend_items": top.items, "blend_scores": top.scores}
    if options.ranker:
        from services.profile.recommendations import ranker

        marks: dict[str, float] = {}

        def mark(share: float) -> None:
            # recommend() reports 0.1 (blend done), 0.5 (examples built), 0.6 (model
            # trained), then the ranking's share up to 1.0.
            for label, at in (("blend", 0.1), ("examples", 0.5), ("model", 0.6), ("ranked", 1.0)):
                if share >= at and label not in marks:
                    marks[label] = time.perf_counter()

        started = time.perf_counter()
        _ranked, used = ranker.recommend(data, now_us, options.size, progress=mark)
        ended = time.perf_counter()
        saved |= {"ranker_items": _ranked.items, "ranker_scores": _ranked.scores}
        knobs = ranker.RankerSettings()
        learners = min(knobs.fit_cells // (knobs.targets * options.items), options.profiles)
        ranked = min(knobs.rank_cells // options.items, options.profiles)
        rows += [
            ("ranker: the blend for every profile", marks["blend"] - started),
            (
                f"ranker: examples of {learners} sampled profiles x {knobs.targets} targets",
                marks["examples"] - marks["blend"],
            ),
            ("ranker: LightGBM lambdarank fit", marks["model"] - marks["examples"]),
            (
                f"ranker: candidates + ranking of {ranked} profiles",
                marks["ranked"] - marks["model"],
            ),
            (f"ranker: total (used={used})", ended - started),
        ]
    print(f"{options.profiles} profiles x {options.items} items, {count} interactions")
    print("| phase | seconds | vs blend top-N |")
    print("|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {seconds / blend_s:.2f} |")
    if options.save:
        # To check that a change meant to keep the results keeps them: compare two runs.
        write: Any = np.savez_compressed  # its stub types **arrays as its own flags
        write(options.save, **saved)
    if not options.redis:
        return
    started = time.perf_counter()
    metadata = orjson.dumps({"name": "item", "price": 9.99}).decode()
    lists = [
        (
            profile,
            [
                {"item_id": f"sku-{item}", "score": round(score, 6), "model": "bench",
                 "metadata": metadata}
                for item, score in zip(items, scores, strict=True)
                if item >= 0
            ],
        )
        for profile, (items, scores) in enumerate(
            zip(top.items.tolist(), top.scores.tolist(), strict=True)
        )
    ]  # fmt: skip
    print(f"building the lists: {time.perf_counter() - started:.1f} s")
    redis = create_redis(options.redis)
    try:
        await redis.flushdb(asynchronous=True)
        started = time.perf_counter()
        await RecommendationWriter(redis).replace("bench", "bench", lists)
        print(f"writing them to Redis: {time.perf_counter() - started:.1f} s")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
