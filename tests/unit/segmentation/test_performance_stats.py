"""Lift, its intervals and the sample-ratio-mismatch check against hand-computed
figures and simulations with a planted lift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.segmentation.performance import (
    GroupCounts,
    lift,
    sample_ratio_mismatch,
    summarize,
)

pytestmark = pytest.mark.unit


def test_hand_computed_example() -> None:
    # 12% of 1,000 against 10% of 1,000, worked by hand:
    # se = sqrt(.12*.88/1000 + .10*.90/1000) = sqrt(.0001956) = .0139857
    # absolute .02 +- 1.96 * .0139857 = [-.007412, .047412]
    # se(ln RR) = sqrt(1/120 - 1/1000 + 1/100 - 1/1000) = sqrt(.0163333) = .127802
    # relative exp(ln 1.2 +- 1.96 * .127802) - 1 = [-.065894, .541581]
    got = lift(GroupCounts(1000, 120), GroupCounts(1000, 100))
    assert got.absolute == pytest.approx(0.02)
    assert got.absolute_low == pytest.approx(-0.007412, abs=1e-6)
    assert got.absolute_high == pytest.approx(0.047412, abs=1e-6)
    assert got.relative == pytest.approx(0.2)
    assert got.relative_low == pytest.approx(-0.065894, abs=2e-6)
    assert got.relative_high == pytest.approx(0.541581, abs=2e-6)


def test_undefined_without_data() -> None:
    assert lift(GroupCounts(0, 0), GroupCounts(10, 1)).absolute is None
    no_holdout_conversions = lift(GroupCounts(10, 2), GroupCounts(10, 0))
    assert no_holdout_conversions.absolute == pytest.approx(0.2)
    assert no_holdout_conversions.relative is None


def test_planted_20_percent_lift_is_recovered_within_its_interval() -> None:
    rng = np.random.default_rng(20)
    n_t, n_h, base = 60_000, 60_000, 0.10
    c_t = int(rng.binomial(n_t, base * 1.2))
    c_h = int(rng.binomial(n_h, base))
    got = lift(GroupCounts(n_t, c_t), GroupCounts(n_h, c_h))
    assert got.relative_low is not None and got.relative_high is not None
    assert got.relative_low < 0.2 < got.relative_high
    assert got.relative_low > 0  # and the lift is significant at this size


def test_intervals_cover_the_planted_lift_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(95)
    runs, n, base = 2_000, 5_000, 0.10
    treated = rng.binomial(n, base * 1.2, runs)
    held = rng.binomial(n, base, runs)
    relative = absolute = 0
    for c_t, c_h in zip(treated, held, strict=True):
        got = lift(GroupCounts(n, int(c_t)), GroupCounts(n, int(c_h)))
        relative += got.relative_low <= 0.2 <= got.relative_high  # type: ignore[operator]
        absolute += got.absolute_low <= 0.02 <= got.absolute_high  # type: ignore[operator]
    assert 0.93 < relative / runs < 0.97
    assert 0.93 < absolute / runs < 0.97


def test_sample_ratio_mismatch() -> None:
    fine = sample_ratio_mismatch(9_000, 1_000, 0.1)
    assert fine.chi_square == pytest.approx(0.0)
    assert fine.p_value == pytest.approx(1.0)
    assert not fine.mismatch
    # 9,200 / 800 at 10%: chi2 = 200^2/1000 + 200^2/9000 = 44.44, p ~ 2.6e-11
    bad = sample_ratio_mismatch(9_200, 800, 0.1)
    assert bad.chi_square == pytest.approx(40 + 40 / 9)
    assert bad.p_value == pytest.approx(math.erfc(math.sqrt((40 + 40 / 9) / 2)))
    assert bad.mismatch
    assert sample_ratio_mismatch(10, 5, 0.0).mismatch  # held-out exposures without a holdout


def test_summary_groups_people_by_day_of_first_exposure() -> None:
    day = 86_400_000_000
    people = [
        (0 * day + 5, False, True),
        (0 * day + 9, True, False),
        (1 * day + 1, False, False),
        (1 * day + 2, False, True),
        (1 * day + 3, True, True),
    ]
    report = summarize("a", 0.2, 0, 2 * day, people)
    assert [d.day_us for d in report.days] == [0, day]
    assert report.days[1].treatment == GroupCounts(2, 1)
    assert report.days[1].holdout == GroupCounts(1, 1)
    assert report.total.treatment == GroupCounts(3, 2)
    assert report.total.holdout == GroupCounts(2, 1)
    assert report.total.lift.absolute == pytest.approx(2 / 3 - 1 / 2)
    assert report.sample_ratio.observed_holdout_share == pytest.approx(0.4)
