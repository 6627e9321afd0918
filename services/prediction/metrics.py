"""Binary-classification metrics and isotonic calibration in NumPy (no per-row Python
except the pool-adjacent-violators pass, which is linear in the calibration rows).

Every metric takes labels ``y`` (0/1) and probabilities ``p`` of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPSILON = 1e-15


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start index of each run of equal values.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count half)."""
    positives = float(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision: precision at each distinct threshold weighted by the recall
    it adds (equal scores form one threshold)."""
    positives = float(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ordered_p, ordered_y = p[order], y[order]
    last_of_threshold = np.r_[ordered_p[1:] != ordered_p[:-1], True]
    true_pos = np.cumsum(ordered_y)[last_of_threshold]
    seen = (np.flatnonzero(last_of_threshold) + 1).astype(np.float64)
    recall = true_pos / positives
    precision = true_pos / seen
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood (probabilities clipped away from 0 and 1)."""
    q = np.clip(p, EPSILON, 1 - EPSILON)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((p - y) ** 2))


def calibration_by_decile(y: np.ndarray, p: np.ndarray) -> list[dict[str, Any]]:
    """Ten groups of (nearly) equal size by predicted probability, lowest first: the
    mean prediction beside the actual rate of each."""
    order = np.argsort(p, kind="mergesort")
    bins = []
    for decile, part in enumerate(np.array_split(order, 10), start=1):
        if len(part) == 0:
            continue
        bins.append(
            {
                "decile": decile,
                "mean_predicted": float(p[part].mean()),
                "actual_rate": float(y[part].mean()),
                "count": len(part),
            }
        )
    return bins


def top_decile(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(lift, precision) of the tenth of profiles with the highest probability."""
    size = max(1, int(np.ceil(len(p) / 10)))
    top = np.argsort(-p, kind="mergesort")[:size]
    precision = float(y[top].mean())
    base = float(y.mean())
    return (precision / base if base > 0 else float("nan")), precision


def summary(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Every metric of probabilities `p` against labels `y`, as stored with a model."""
    lift, precision = top_decile(y, p)
    return {
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "top_decile_lift": lift,
        "top_decile_precision": precision,
        "calibration": calibration_by_decile(y, p),
    }


# The most a probability moves to break a tie of the isotonic steps by the raw score:
# far below any difference a metric or a person reads, far above float64's resolution
# at the probabilities of propensity models.
TIE_BREAK = 1e-9


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing step function from raw score to probability (interpolated
    linearly between the fitted points, flat beyond them), whose ties are broken by the
    raw score.

    A step of the curve maps many raw scores to one probability. Left at that, the
    profiles of a step tie, and the model's own ranking within it is lost: on CDNOW the
    ties of the top steps cost 0.01 PR AUC and 0.003 ROC AUC against the raw scores
    (docs/predictions.md, "CDNOW"). Each probability is therefore raised by less than
    TIE_BREAK, increasing with the raw score (an arctangent, so scores beyond the
    fitted range keep their order too): the calibration is unchanged for every purpose,
    and the order is the model's.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        xs = np.asarray(self.x)
        stepped = np.interp(raw, xs, np.asarray(self.y))
        if len(xs) == 0:
            return stepped
        middle = (xs[0] + xs[-1]) / 2
        half = max((xs[-1] - xs[0]) / 2, 1e-12)
        order = 0.5 + np.arctan((np.asarray(raw, dtype=np.float64) - middle) / half) / np.pi
        return np.minimum(stepped + TIE_BREAK * order, 1.0)

    def as_json(self) -> dict[str, list[float]]:
        """The fitted points, as stored with a model."""
        return {"x": list(self.x), "y": list(self.y)}


def fit_isotonic(raw: np.ndarray, y: np.ndarray, prior_weight: float = 1.0) -> Isotonic:
    """Isotonic regression of `y` on `raw` by pool-adjacent-violators, each block's rate
    shrunk by `prior_weight` pseudo-rows at the overall rate: a block with no positive
    among its rows says the rate is small, not zero, and a probability of exactly 0 or
    1 would make one surprise cost an unbounded log loss."""
    order = np.argsort(raw, kind="mergesort")
    xs, ys = raw[order], y[order].astype(np.float64)
    # Equal raw scores form one starting block (their mean label).
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    weights = np.diff(np.r_[starts, len(xs)]).astype(np.float64)
    means = np.add.reduceat(ys, starts) / weights
    lows, highs = list(xs[starts]), list(xs[np.r_[starts[1:], len(xs)] - 1])
    block_mean: list[float] = []
    block_weight: list[float] = []
    block_low: list[float] = []
    block_high: list[float] = []
    for mean, weight, low, high in zip(means, weights, lows, highs, strict=True):
        block_mean.append(float(mean))
        block_weight.append(float(weight))
        block_low.append(float(low))
        block_high.append(float(high))
        while len(block_mean) > 1 and block_mean[-2] >= block_mean[-1]:
            w = block_weight[-2] + block_weight[-1]
            m = (block_mean[-2] * block_weight[-2] + block_mean[-1] * block_weight[-1]) / w
            block_mean[-2:] = [m]
            block_weight[-2:] = [w]
            block_high[-2:] = [block_high[-1]]
            block_low.pop()
    overall = float(ys.mean()) if len(ys) else 0.0
    shrunk = (np.array(block_mean) * np.array(block_weight) + prior_weight * overall) / (
        np.array(block_weight) + prior_weight
    )
    # Shrinking moves small blocks more than large ones; keep the curve non-decreasing.
    shrunk = np.maximum.accumulate(shrunk).tolist()
    points_x: list[float] = []
    points_y: list[float] = []
    for low, high, mean in zip(block_low, block_high, shrunk, strict=True):
        points_x.append(low)
        points_y.append(mean)
        if high != low:
            points_x.append(high)
            points_y.append(mean)
    return Isotonic(tuple(points_x), tuple(points_y))
