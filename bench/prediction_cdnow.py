"""Evaluate the prediction model on CDNOW purchases (data nobody here made), beside the
recency-frequency baseline, at any cutoffs and horizons.

    pip install --no-deps lifetimes==0.11.3   # ships CDNOW_master.txt
    .venv/bin/python bench/prediction_cdnow.py --cutoff 1997-07-01 1997-10-01 1998-01-01 \\
        --horizon 7 30

Each run loads the 69,659 purchases (23,570 customers) into a fresh Postgres database
(one track ``purchase`` event per line at 12:00 UTC of its date, ``revenue`` = dollar
value), then trains through the prediction domain exactly as the Train RPC does (four
stacked snapshots one horizon apart ending at the cutoff, split by profile, early
stopping, isotonic calibration) and prints the held-out metrics of the model and of
the baseline. A purchase on the cutoff's date counts as a label, never as a feature.
The events are written straight into the tables, not through ingest. BG/NBD is not
rebuilt here (docs/predictions.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.prediction.features_sql import FeatureQueries
from services.prediction.hot import PredictionHotState
from services.prediction.service import Predictions
from services.prediction.store import PredictionStore
from services.shared.clock import US_PER_DAY, FixedClock
from services.shared.db import migrate
from services.shared.db.engine import create_engine
from services.shared.redis import create_redis
from tests.helpers import backends
from tests.integration.prediction.planted import add_profiles, insert_events

WS = "cdnow"
METRICS = ("roc_auc", "pr_auc", "brier", "top_decile_lift")


def cdnow_file() -> Path:
    """CDNOW_master.txt from the installed lifetimes package (not imported)."""
    located = importlib.metadata.distribution("lifetimes").locate_file(
        "lifetimes/datasets/CDNOW_master.txt"
    )
    return Path(str(located))


def day_us(text: str) -> int:
    """Microseconds of 00:00 UTC of a YYYY-MM-DD or YYYYMMDD date."""
    return (
        int(datetime.strptime(text.replace("-", ""), "%Y%m%d").replace(tzinfo=UTC).timestamp())
        * 1_000_000
    )


async def load(engine: Any, text: str) -> int:
    """Customers as profiles, purchases as events; returns the purchase count."""
    lines = [f for f in (line.split() for line in text.splitlines()) if f and f[0].isdigit()]
    customers = sorted({int(f[0]) for f in lines})
    ids = dict(zip(customers, await add_profiles(engine, WS, len(customers)), strict=True))
    rows = [
        {
            "workspace_id": WS,
            "profile_id": ids[int(customer)],
            "type": "track",
            "name": "purchase",
            "timestamp_us": day_us(date) + 12 * 3_600_000_000,
            "message_id": f"cdnow-{n}",
            "properties": {"revenue": float(dollars), "cds": int(cds)},
        }
        for n, (customer, date, cds, dollars) in enumerate(lines)
    ]
    await insert_events(engine, rows)
    return len(rows)


async def evaluate(cutoffs: list[str], horizons: list[int], path: Path) -> None:
    url = await backends.create_database()
    engine = create_engine(url)
    redis = create_redis("memory://")
    try:
        await migrate.upgrade(engine)
        purchases = await load(engine, path.read_text())  # noqa: ASYNC240 (once, small)
        print(f"loaded {purchases} purchases from {path.name}")
        clock = FixedClock(0)
        predictions = Predictions(
            PredictionStore(engine), FeatureQueries(engine), PredictionHotState(redis), clock
        )
        print("horizon  cutoff      positives  " + "  ".join(f"{m:>22}" for m in METRICS))
        for horizon in horizons:
            means: dict[str, list[tuple[float, float]]] = {m: [] for m in METRICS}
            key = f"purchase_{horizon}d"
            await predictions.create(WS, key, "", b'{"event": "purchase"}', horizon, "")
            for cutoff in cutoffs:
                clock.set(day_us(cutoff) + horizon * US_PER_DAY)
                trained = await predictions.train(WS, key, day_us(cutoff))
                m, base = trained.metrics, trained.metrics["baseline"]
                cells = []
                for name in METRICS:
                    means[name].append((m[name], base[name]))
                    cells.append(f"{m[name]:>9.4f} (base {base[name]:.4f})")
                print(f"{horizon:>7}  {cutoff}  {m['positive_rate']:>9.4f}  " + "  ".join(cells))
            mean_cells = []
            for pairs in means.values():
                model, baseline = (statistics.mean(column) for column in zip(*pairs, strict=True))
                mean_cells.append(f"{model:>9.4f} (base {baseline:.4f})")
            print(f"{horizon:>7}  {'mean':<10}  {'':>9}  " + "  ".join(mean_cells))
    finally:
        await redis.aclose()
        await engine.dispose()
        await backends.drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cutoff", nargs="+", default=["1997-07-01", "1997-10-01", "1998-01-01"])
    parser.add_argument("--horizon", nargs="+", type=int, default=[7, 30])
    parser.add_argument("--file", type=Path, default=None, help="CDNOW_master.txt")
    args = parser.parse_args()
    np.seterr(all="ignore")
    asyncio.run(evaluate(args.cutoff, args.horizon, args.file or cdnow_file()))


if __name__ == "__main__":
    main()
