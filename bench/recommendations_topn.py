"""Top-N generation of the recommendation model for many profiles, and writing the
lists to the hot state.

    .venv/bin/python bench/recommendations_topn.py --profiles 100000 --items 10000 \
        --interactions 1000000 --redis redis://127.0.0.1:6379/0

Interactions are synthetic: profiles uniform, items Zipf-skewed (exponent 1.3), times
over 30 days. Times the item-item matrix, the scoring of every profile (top 10), and
building and writing the 100k lists (10 items each, with metadata) through the same
writer training uses. The Redis database is flushed first: give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

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
    started = time.perf_counter()
    matrix = scoring.cooccurrence(data, now_us, scoring.Settings())
    print(f"item-item matrix: {time.perf_counter() - started:.1f} s ({matrix.nnz} entries)")
    started = time.perf_counter()
    top = scoring.top_n(data, now_us, options.size)
    print(
        f"top {options.size} of {options.profiles} profiles: {time.perf_counter() - started:.1f} s"
    )
    if options.ranker:
        from services.profile.recommendations import ranker

        started = time.perf_counter()
        _ranked, used = ranker.recommend(
            data,
            now_us,
            options.size,
            progress=lambda share: print(
                f"  ranker {share:.0%} at {time.perf_counter() - started:.1f} s", flush=True
            ),
        )
        print(
            f"ranker (fit + rank, used={used}) top {options.size} of {options.profiles} "
            f"profiles: {time.perf_counter() - started:.1f} s"
        )
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
        await redis.flushdb()
        started = time.perf_counter()
        await RecommendationWriter(redis).replace("bench", "bench", lists)
        print(f"writing them to Redis: {time.perf_counter() - started:.1f} s")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
