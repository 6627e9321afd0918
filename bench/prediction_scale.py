"""Prediction at scale: features, training and the scoring job for many profiles, each
phase timed, against LightGBM alone on the same matrices in the same run.

    .venv/bin/python bench/prediction_scale.py --profiles 100000 --events 1000000
    .venv/bin/python bench/prediction_scale.py --profiles 1000000 --events 10000000 --repeat 1

Simulated behaviour with a planted signal (each profile's hidden interest drives its
product views, and a purchase follows a product view within three days with a chance
that rises with interest) over 120 days, copied straight into Postgres. Phases:

- ``features (1 snapshot)``: every profile's point-in-time features at one cutoff (SQL);
- ``train job``: Predictions.train as the Train RPC runs it (every stacked snapshot's
  features and labels, LightGBM with early stopping, calibration, metrics, the model
  stored), against ``lightgbm.train`` alone on the same stacked matrix for the same
  number of rounds;
- ``score job``: Predictions.score as the hourly job runs it (features at now, predict
  with reasons, percentiles, scores replaced in Postgres and written to Redis), against
  ``Booster.predict`` alone on the same matrix.

Prints median and p99 of each phase over ``--repeat`` runs and the ratios to the
baselines (timings on a shared machine are noisy: the ratios are what to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import lightgbm as lgb
import numpy as np
import orjson
import redis.asyncio as redis_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.prediction import training
from services.prediction.features_sql import FeatureQueries, label_vector
from services.prediction.hot import PredictionHotState
from services.prediction.model import Goal
from services.prediction.service import Predictions, snapshot_cutoffs
from services.prediction.store import PredictionStore
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from tests.helpers import backends

WS = "scale"
NOW = 1_748_736_000_000_000  # 2025-06-01
DAYS = 120
HORIZON = 7
NAMES = np.array(["page_view", "view_product", "add_to_cart", "search"])
COPY_ROWS = 200_000


def simulate(profiles: int, events: int, seed: int = 5) -> list[tuple[Any, ...]]:
    """Event rows (workspace, message id, type, name, profile, timestamp, received,
    properties): `events` browsing events plus the purchases they lead to."""
    rng = np.random.default_rng(seed)
    interest = rng.lognormal(-0.5, 1.0, profiles)
    activity = rng.lognormal(0.0, 1.0, profiles)
    who = rng.choice(profiles, size=events, p=activity / activity.sum()) + 1
    kind = rng.choice(4, size=events, p=[0.5, 0.3, 0.1, 0.1])
    at = NOW - rng.integers(0, DAYS * US_PER_DAY, size=events)
    views = kind == 1
    chance = 0.02 + 0.1 * np.tanh(interest[who[views] - 1] / 3)
    buys = rng.random(int(views.sum())) < chance
    buyer = who[views][buys]
    bought_at = at[views][buys] + rng.integers(0, 3 * US_PER_DAY, size=len(buyer))
    keep = bought_at <= NOW
    buyer, bought_at = buyer[keep], bought_at[keep]
    rows: list[tuple[Any, ...]] = [
        (WS, f"e{i}", "track", name, pid, t, t, None)
        for i, (name, pid, t) in enumerate(
            zip(NAMES[kind].tolist(), who.tolist(), at.tolist(), strict=True)
        )
    ]
    revenue = orjson.dumps({"revenue": 25.0}).decode()
    rows += [
        (WS, f"p{i}", "track", "purchase", pid, t, t, revenue)
        for i, (pid, t) in enumerate(zip(buyer.tolist(), bought_at.tolist(), strict=True))
    ]
    return rows


async def load(url: str, profiles: int, events: int) -> int:
    """Profiles 1..N and the simulated events, by COPY; returns the event count."""
    connection = await asyncpg.connect(backends.asyncpg_dsn(url))
    try:
        await connection.copy_records_to_table(
            "profiles",
            records=[(p, WS, p, NOW - DAYS * US_PER_DAY) for p in range(1, profiles + 1)],
            columns=["profile_id", "workspace_id", "canonical_id", "created_at_us"],
        )
        rows = simulate(profiles, events)
        columns = [
            "workspace_id",
            "message_id",
            "type",
            "name",
            "profile_id",
            "timestamp_us",
            "received_at_us",
            "properties",
        ]
        for start in range(0, len(rows), COPY_ROWS):
            await connection.copy_records_to_table(
                "events", records=rows[start : start + COPY_ROWS], columns=columns
            )
        await connection.execute("ANALYZE")
        return len(rows)
    finally:
        await connection.close()


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    """Wall seconds of each of `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return times


def p99(times: list[float]) -> float:
    """The 99th percentile (the maximum with fewer than 100 runs)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def bench(profiles: int, events: int, repeat: int) -> None:
    url = await backends.create_database()
    engine = create_engine(url)
    redis = redis_asyncio.Redis.from_url(backends.test_redis_url())
    await redis.flushdb(asynchronous=True)
    try:
        await migrate.upgrade(engine)
        started = time.perf_counter()
        loaded = await load(url, profiles, events)
        print(
            f"# {profiles:,} profiles, {loaded:,} events loaded in"
            f" {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        queries = FeatureQueries(engine)
        clock = FixedClock(NOW)
        predictions = Predictions(
            PredictionStore(engine), queries, PredictionHotState(redis), clock
        )
        goal = Goal("purchase")
        await predictions.create(WS, "will_buy", "", b'{"event": "purchase"}', HORIZON, "")
        cutoff = NOW - HORIZON * US_PER_DAY
        spec = await queries.choose_spec(WS, cutoff, goal)
        results: list[tuple[str, list[float], str, list[float]]] = []

        features_times = await timed(lambda: queries.features(WS, spec, cutoff, None), repeat)

        trained: list[Any] = []

        async def train() -> None:
            trained.append(await predictions.train(WS, "will_buy", None))

        train_times = await timed(train, repeat)
        # The baseline: LightGBM alone on the same stacked matrix, same rounds.
        parts = []
        for index, at in enumerate(snapshot_cutoffs(cutoff, HORIZON)):
            ids, matrix = await queries.features(WS, spec, at, None)
            performers = await queries.goal_performers(
                WS, goal, at, at + HORIZON * US_PER_DAY, None
            )
            parts.append((ids, matrix, label_vector(ids, performers), index))
        stacked = np.vstack([p[1] for p in parts])
        labels = np.concatenate([p[2] for p in parts])
        rounds = int(trained[-1].metrics["best_iteration"])
        fit_rows = training.profile_part(np.concatenate([p[0] for p in parts])) == 0

        def fit_alone() -> lgb.Booster:
            params = training._PARAMS | {
                "min_data_in_leaf": training._min_rows_per_leaf(int(fit_rows.sum()))
            }
            data = lgb.Dataset(stacked[fit_rows], labels[fit_rows])
            return lgb.train(params, data, num_boost_round=rounds)

        async def lgb_train() -> None:
            await asyncio.to_thread(fit_alone)

        lgb_train_times = await timed(lgb_train, repeat)
        results.append(("features (1 snapshot)", features_times, "", []))
        results.append(
            (
                f"train job ({len(parts)} snapshots, {len(labels):,} rows)",
                train_times,
                f"lightgbm.train alone ({rounds} rounds)",
                lgb_train_times,
            )
        )

        async def score() -> None:
            await predictions.score(WS, "will_buy", None)

        score_times = await timed(score, repeat)
        booster = fit_alone()
        ids, matrix = await queries.features(WS, spec, NOW, None)

        async def predict_alone() -> None:
            await asyncio.to_thread(booster.predict, matrix)

        predict_times = await timed(predict_alone, repeat)
        results.append(
            (
                f"score job ({len(ids):,} profiles)",
                score_times,
                "Booster.predict alone",
                predict_times,
            )
        )
        metrics = trained[-1].metrics
        print(
            f"# model ROC AUC {metrics['roc_auc']:.3f} (baseline"
            f" {metrics['baseline']['roc_auc']:.3f}), {repeat} runs per phase"
        )
        print("| phase | median s | p99 s | baseline (same run) | median s | p99 s | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name, times, base_name, base_times in results:
            ratio = (
                f"{statistics.median(times) / statistics.median(base_times):.1f}x"
                if base_times
                else ""
            )
            base = (
                f"{statistics.median(base_times):.2f} | {p99(base_times):.2f}"
                if base_times
                else " | "
            )
            print(
                f"| {name} | {statistics.median(times):.2f} | {p99(times):.2f} |"
                f" {base_name} | {base} | {ratio} |"
            )
    finally:
        await redis.flushdb(asynchronous=True)
        await redis.aclose()
        await engine.dispose()
        await backends.drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(bench(args.profiles, args.events, args.repeat))


if __name__ == "__main__":
    main()
