"""Metrics and isotonic calibration against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from services.prediction import metrics
from services.prediction.training import percentiles, profile_part

pytestmark = pytest.mark.unit


def test_roc_auc_counts_pairs_and_ties_half() -> None:
    y = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert metrics.roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert metrics.roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert np.isnan(metrics.roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_average_precision() -> None:
    # Ranked: 0.9 (1), 0.8 (0), 0.7 (1): precision 1 at recall 1/2, 2/3 at recall 1.
    y = np.array([1, 0, 1])
    assert metrics.pr_auc(y, np.array([0.9, 0.8, 0.7])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Equal scores are one threshold: everything at once, precision 2/3.
    assert metrics.pr_auc(y, np.array([0.5, 0.5, 0.5])) == pytest.approx(2 / 3)


def test_log_loss_brier_and_top_decile() -> None:
    y = np.array([1.0] * 2 + [0.0] * 18)
    p = np.array([0.9, 0.8] + [0.1] * 18)
    assert metrics.brier(y, p) == pytest.approx((0.01 + 0.04 + 18 * 0.01) / 20)
    assert metrics.log_loss(y, p) == pytest.approx(
        -(np.log(0.9) + np.log(0.8) + 18 * np.log(0.9)) / 20
    )
    lift, precision = metrics.top_decile(y, p)
    assert (lift, precision) == (10.0, 1.0)
    bins = metrics.calibration_by_decile(y, p)
    assert [b["count"] for b in bins] == [2] * 10
    assert bins[-1] == {
        "decile": 10,
        "mean_predicted": pytest.approx(0.85),
        "actual_rate": 1.0,
        "count": 2,
    }


def test_isotonic_pools_violators_and_is_monotone() -> None:
    raw = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    fitted = metrics.fit_isotonic(raw, y, prior_weight=0)
    # 2 and 3, 4 violate order: pooled into one block of mean 1/3.
    assert fitted(raw).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 1, 1], abs=1e-8)
    # Shrunk by one pseudo-row at the overall rate (1/2): never exactly 0 or 1.
    shrunk = metrics.fit_isotonic(raw, y)(raw).tolist()
    assert shrunk == pytest.approx([0.25, 1.5 / 4, 1.5 / 4, 1.5 / 4, 2.5 / 3, 2.5 / 3], abs=1e-8)
    rng = np.random.default_rng(3)
    noisy = rng.random(500)
    outcome = (rng.random(500) < noisy).astype(float)
    curve = metrics.fit_isotonic(noisy, outcome)(np.linspace(0, 1, 101))
    assert np.all(np.diff(curve) >= 0)
    assert curve.mean() == pytest.approx(0.5, abs=0.1)


def test_isotonic_steps_keep_the_raw_order() -> None:
    """Scores pooled into one step stay ordered by the raw score (ties would discard the
    model's ranking within the step), moved by less than TIE_BREAK; beyond the fitted
    range too."""
    raw = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    fitted = metrics.fit_isotonic(raw, y)
    calibrated = fitted(np.array([0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0]))
    assert np.all(np.diff(calibrated) > 0)
    steps = np.interp(raw, np.asarray(fitted.x), np.asarray(fitted.y))
    assert np.all(np.abs(fitted(raw) - steps) < metrics.TIE_BREAK)
    assert fitted(np.array([1e9])).item() <= 1.0


def test_percentiles_put_the_top_tenth_above_90() -> None:
    p = np.arange(100) / 100
    q = percentiles(p)
    assert (q > 90).sum() == 10
    assert q.max() == 100
    assert percentiles(np.array([0.2, 0.2])).tolist() == [100, 100]


def test_profile_split_is_stable_and_about_60_20_20() -> None:
    ids = np.arange(1, 20_001)
    parts = profile_part(ids)
    shares = np.bincount(parts) / len(ids)
    assert shares == pytest.approx([0.6, 0.2, 0.2], abs=0.02)
    assert np.array_equal(profile_part(ids[::-1]), parts[::-1])
