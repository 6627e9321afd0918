"""Training and scoring with LightGBM on feature matrices (no I/O here).

Training rows are stacked snapshots: at each of several earlier cutoffs, every profile's
point-in-time features with its label (the goal in the horizon after that cutoff). The
rows are split by profile, never by row, so that no person's other snapshots leak into
the parts that judge the model:

- train (60% of profiles): the trees;
- validation (20%): early stopping, then the isotonic calibration of the raw scores;
- test (20%): the reported metrics, on the latest snapshot only (the situation scoring
  is in: predict the next horizon from today's features).

Class imbalance: positives are weighted up (LightGBM ``is_unbalance``); the isotonic
calibration on the validation part maps the reweighted scores back to probabilities,
so 0.3 means about 30%. The recency-frequency baseline is calibrated the same way and
measured on the same test rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from services.prediction import metrics
from services.prediction.features import FeatureSpec
from services.shared.errors import FailedPrecondition

MIN_PER_CLASS = 100
TOP_REASONS = 3
_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "auc",
    # Small trees learning slowly: propensity signals are few and noisy, and on CDNOW
    # (docs/predictions.md) 31-leaf trees lost ~0.01-0.02 AUC to these.
    "learning_rate": 0.03,
    "num_leaves": 7,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "is_unbalance": True,
    # One thread: the replica keeps a core for its RPCs, and on a busy machine OpenMP's
    # spinning threads made a 64k-row fit five times slower with 2 threads than with 1.
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "seed": 7,
    "verbose": -1,
}
MAX_ROUNDS = 600
EARLY_STOPPING_ROUNDS = 50


def _min_rows_per_leaf(train_rows: int) -> int:
    """A leaf holds at least 1% of the training rows, between 20 and 200."""
    return max(20, min(200, train_rows // 100))


@dataclass(frozen=True)
class Snapshots:
    """Stacked training rows: features, labels, the row's profile and its snapshot
    (0 is the latest cutoff)."""

    features: np.ndarray
    labels: np.ndarray
    profile_ids: np.ndarray
    snapshot: np.ndarray


@dataclass(frozen=True)
class TrainedModel:
    """A fitted, calibrated model with its held-out metrics."""

    model_text: str
    calibration: metrics.Isotonic
    metrics: dict[str, Any]


def profile_part(profile_ids: np.ndarray) -> np.ndarray:
    """0 train, 1 validation, 2 test: a fixed hash of the profile id, so a profile's
    rows of every snapshot fall into the same part."""
    bucket = (profile_ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    tenth = (bucket * np.uint64(10)) >> np.uint64(32)
    return np.where(tenth < 6, 0, np.where(tenth < 8, 1, 2))


def check_enough(rows: Snapshots, minimum: int = MIN_PER_CLASS) -> None:
    """FAILED_PRECONDITION unless both classes have at least `minimum` rows."""
    positives = int(rows.labels.sum())
    negatives = len(rows.labels) - positives
    profiles = len(np.unique(rows.profile_ids))
    if positives < minimum or negatives < minimum:
        snapshots = len(np.unique(rows.snapshot)) if len(rows.snapshot) else 0
        raise FailedPrecondition(
            f"too little data to train: {positives} positive and {negatives} negative"
            f" examples from {profiles} profiles over {snapshots} snapshots; at least"
            f" {minimum} of each class are needed"
        )


def baseline_scores(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The recency-frequency baseline's raw score: more events and a later last event
    score higher (log(1 + frequency) - log(1 + days since the last event))."""
    recency = features[:, spec.column("recency_days")]
    frequency = features[:, spec.column("frequency")]
    return np.log1p(frequency) - np.log1p(np.maximum(recency, 0.0))


def train(rows: Snapshots, spec: FeatureSpec) -> TrainedModel:
    """Fit, early-stop, calibrate and measure a model on stacked snapshots."""
    check_enough(rows)
    part = profile_part(rows.profile_ids)
    fit, valid = part == 0, part == 1
    test = (part == 2) & (rows.snapshot == 0)
    for name, mask in (("training", fit), ("validation", valid), ("test", test)):
        labels = rows.labels[mask]
        if labels.sum() == 0 or labels.sum() == len(labels):
            raise FailedPrecondition(
                f"the {name} part of the profiles holds only one class"
                f" ({int(labels.sum())} positives of {len(labels)} rows); more data is needed"
            )
    names = spec.names()
    # LightGBM refuses some characters in feature names; the columns are positional.
    train_set = lgb.Dataset(
        rows.features[fit],
        rows.labels[fit],
        categorical_feature=spec.categorical_columns() or "auto",
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(rows.features[valid], rows.labels[valid], reference=train_set)
    booster = lgb.train(
        _PARAMS | {"min_data_in_leaf": _min_rows_per_leaf(int(fit.sum()))},
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    calibration = metrics.fit_isotonic(
        np.asarray(booster.predict(rows.features[valid], num_iteration=best)), rows.labels[valid]
    )
    y_test = rows.labels[test]
    p_test = calibration(np.asarray(booster.predict(rows.features[test], num_iteration=best)))
    baseline_calibration = metrics.fit_isotonic(
        baseline_scores(rows.features[valid], spec), rows.labels[valid]
    )
    p_baseline = baseline_calibration(baseline_scores(rows.features[test], spec))
    gains = booster.feature_importance(importance_type="gain", iteration=best)
    by_gain = sorted(zip(names, map(float, gains), strict=True), key=lambda item: -item[1])
    importance = [{"feature": n, "gain": g} for n, g in by_gain]
    summary = metrics.summary(y_test, p_test) | {
        "feature_importance": importance,
        "train_rows": int(fit.sum()),
        "validation_rows": int(valid.sum()),
        "test_rows": int(test.sum()),
        "positive_rate": float(rows.labels.mean()),
        "best_iteration": int(best),
        "snapshots": len(np.unique(rows.snapshot)),
        "baseline": metrics.summary(y_test, p_baseline),
    }
    return TrainedModel(booster.model_to_string(num_iteration=best), calibration, summary)


@dataclass(frozen=True)
class Scores:
    """Scores of a population: probability, percentile and top reasons per profile."""

    profile_ids: np.ndarray
    probability: np.ndarray
    percentile: np.ndarray
    reasons: list[list[dict[str, Any]]]


def percentiles(probability: np.ndarray) -> np.ndarray:
    """Percent of the population scoring at most each profile's probability (0-100]:
    the top tenth is percentile > 90."""
    if len(probability) == 0:
        return probability
    ordered = np.sort(probability)
    at_most = np.searchsorted(ordered, probability, side="right")
    return 100.0 * at_most / len(probability)


def score(
    model_text: str,
    calibration: metrics.Isotonic,
    spec: FeatureSpec,
    profile_ids: np.ndarray,
    features: np.ndarray,
) -> Scores:
    """Calibrated probabilities, percentiles and each profile's top reasons (the
    features whose LightGBM contributions raised its score most)."""
    if len(profile_ids) == 0:
        return Scores(profile_ids, np.zeros(0), np.zeros(0), [])
    booster = lgb.Booster(model_str=model_text)
    probability = calibration(np.asarray(booster.predict(features)))
    contributions = np.asarray(booster.predict(features, pred_contrib=True))[:, :-1]
    top = np.argsort(-contributions, axis=1, kind="stable")[:, :TOP_REASONS]
    names = spec.names()
    top_contribution = np.take_along_axis(contributions, top, axis=1)
    top_value = np.take_along_axis(features, top, axis=1)
    reasons = [
        [
            {"feature": names[j], "value": spec.value_text(j, v), "contribution": float(c)}
            for j, v, c in zip(row, values, contribs, strict=True)
            if c > 0
        ]
        for row, values, contribs in zip(
            top.tolist(), top_value.tolist(), top_contribution.tolist(), strict=True
        )
    ]
    return Scores(profile_ids, probability, percentiles(probability), reasons)


def reason_text(reason: dict[str, Any]) -> str:
    """One reason as people read it: ``view_product count 7d = 4``, ``trait plan = pro``."""
    return f"{reason['feature']} = {reason['value']}"
