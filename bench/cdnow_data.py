"""CDNOW purchases as arrays, and the baselines rebuilt at any cutoff: labels, RFM and
BG/NBD (pure NumPy/SciPy, no I/O beyond reading the file).

Every purchase is an event at 12:00 UTC of its date. A cutoff is 00:00 UTC of a date,
so a purchase on the cutoff's date is a label, never a feature: features read dates
before the cutoff, labels the `horizon` dates from it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from services.prediction import bgnbd, metrics

EPOCH = date(1970, 1, 1)


def cdnow_file() -> Path:
    """CDNOW_master.txt from the installed lifetimes package (not imported)."""
    located = importlib.metadata.distribution("lifetimes").locate_file(
        "lifetimes/datasets/CDNOW_master.txt"
    )
    return Path(str(located))


def day_number(text: str) -> int:
    """Days since 1970-01-01 of a YYYY-MM-DD or YYYYMMDD date."""
    parsed = datetime.strptime(text.replace("-", ""), "%Y%m%d").replace(tzinfo=UTC).date()
    return (parsed - EPOCH).days


@dataclass(frozen=True)
class Purchases:
    """One row per purchase line: customer id, day number, CDs and dollars."""

    customer: np.ndarray
    day: np.ndarray
    cds: np.ndarray
    dollars: np.ndarray

    @classmethod
    def read(cls, path: Path) -> Purchases:
        """Parse the whitespace-separated file (customer, YYYYMMDD, CDs, dollars)."""
        raw = np.loadtxt(path, dtype=np.float64, skiprows=1)
        days = np.array([day_number(str(int(d))) for d in np.unique(raw[:, 1])], dtype=np.int64)
        lookup = dict(zip(np.unique(raw[:, 1]).tolist(), days.tolist(), strict=True))
        return cls(
            raw[:, 0].astype(np.int64),
            np.array([lookup[d] for d in raw[:, 1].tolist()], dtype=np.int64),
            raw[:, 2].astype(np.int64),
            raw[:, 3],
        )

    def customers_before(self, cutoff: int) -> np.ndarray:
        """Sorted ids of the customers with a purchase before the cutoff day."""
        return np.unique(self.customer[self.day < cutoff])

    def labels(self, customers: np.ndarray, cutoff: int, horizon: int) -> np.ndarray:
        """1.0 for each customer that buys on a day in [cutoff, cutoff + horizon)."""
        window = (self.day >= cutoff) & (self.day < cutoff + horizon)
        return np.isin(customers, self.customer[window]).astype(np.float64)

    def summary(self, customers: np.ndarray, cutoff: int) -> tuple[np.ndarray, ...]:
        """BG/NBD's (x, t_x, T) in days and the purchase count, per customer, at the
        cutoff: x is the purchase days after the first (several on a day are one)."""
        before = self.day < cutoff
        pairs = np.unique(np.stack([self.customer[before], self.day[before]]), axis=1)
        at = np.searchsorted(customers, pairs[0])
        first = np.full(len(customers), np.iinfo(np.int64).max)
        last = np.full(len(customers), np.iinfo(np.int64).min)
        np.minimum.at(first, at, pairs[1])
        np.maximum.at(last, at, pairs[1])
        days = np.bincount(at, minlength=len(customers)).astype(np.float64)
        count = np.bincount(
            np.searchsorted(customers, self.customer[before]), minlength=len(customers)
        ).astype(np.float64)
        return (
            days - 1,
            (last - first).astype(np.float64),
            (cutoff - first).astype(np.float64),
            count,
            (cutoff - last).astype(np.float64),
        )


def bgnbd_probability(
    purchases: Purchases, customers: np.ndarray, cutoff: int, horizon: int
) -> np.ndarray:
    """BG/NBD fitted on every customer's history before the cutoff: each one's
    probability of buying within the horizon."""
    x, t_x, big_t, _, _ = purchases.summary(customers, cutoff)
    model = bgnbd.fit(x, t_x, big_t)
    return model.p_purchase_within(float(horizon), x, t_x, big_t)


def rfm_probability(
    purchases: Purchases, customers: np.ndarray, cutoff: int, horizon: int
) -> np.ndarray:
    """The recency-frequency score (log(1 + purchases) - log(1 + days since the last)),
    calibrated isotonically on the snapshot one horizon earlier, whose labels end at the
    cutoff (nothing after the cutoff is read)."""

    def raw(at: int, who: np.ndarray) -> np.ndarray:
        _, _, _, count, recency = purchases.summary(who, at)
        return np.log1p(count) - np.log1p(np.maximum(recency, 0.0))

    earlier = cutoff - horizon
    before = purchases.customers_before(earlier)
    calibration = metrics.fit_isotonic(
        raw(earlier, before), purchases.labels(before, earlier, horizon)
    )
    return calibration(raw(cutoff, customers))


def summarise(labels: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The evaluation's metrics of one scorer."""
    found = metrics.summary(labels, probability)
    return {k: float(found[k]) for k in ("roc_auc", "pr_auc", "brier", "top_decile_lift")}
