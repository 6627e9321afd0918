"""Measured lift of an audience's experience: treatment against holdout.

Pure statistics over counts (no I/O): the store counts, per group and per day of
first exposure, the profiles exposed and those converting within the goal's window
after their first exposure; this module turns the counts into rates, lift with 95%
confidence intervals, and a sample-ratio-mismatch check (docs/audiences.md,
"Performance").

Methods (named in the docs):
- absolute lift p_t - p_h: Wald interval with the unpooled standard error
  sqrt(p_t(1-p_t)/n_t + p_h(1-p_h)/n_h);
- relative lift p_t/p_h - 1: Katz's log interval for the ratio of two proportions,
  exp(ln(p_t/p_h) +- z * sqrt(1/c_t - 1/n_t + 1/c_h - 1/n_h)) - 1;
- sample ratio mismatch: Pearson's chi-square goodness of fit (1 degree of freedom)
  of the exposed counts against the configured holdout share; flagged below
  p = 0.001, the usual threshold for an SRM alarm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SRM_ALPHA",
    "Z95",
    "GroupCounts",
    "Lift",
    "Srm",
    "lift",
    "sample_ratio_mismatch",
]

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class GroupCounts:
    """Exposed and converted profiles of one group."""

    exposed: int
    converted: int

    @property
    def rate(self) -> float | None:
        """Conversion rate; None without exposures."""
        return self.converted / self.exposed if self.exposed else None


@dataclass(frozen=True)
class Lift:
    """Treatment against holdout; a bound is None where it is undefined (no data)."""

    absolute: float | None
    absolute_low: float | None
    absolute_high: float | None
    relative: float | None
    relative_low: float | None
    relative_high: float | None


@dataclass(frozen=True)
class Srm:
    """The sample-ratio-mismatch check of the exposed counts."""

    expected_holdout_share: float
    observed_holdout_share: float | None
    chi_square: float | None
    p_value: float | None
    mismatch: bool


def lift(treatment: GroupCounts, holdout: GroupCounts, z: float = Z95) -> Lift:
    """Absolute and relative lift of treatment over holdout with their intervals."""
    pt, ph = treatment.rate, holdout.rate
    if pt is None or ph is None:
        return Lift(None, None, None, None, None, None)
    absolute = pt - ph
    se = math.sqrt(pt * (1 - pt) / treatment.exposed + ph * (1 - ph) / holdout.exposed)
    relative = relative_low = relative_high = None
    if ph > 0:
        relative = pt / ph - 1
        if pt > 0:
            se_log = math.sqrt(
                1 / treatment.converted
                - 1 / treatment.exposed
                + 1 / holdout.converted
                - 1 / holdout.exposed
            )
            log_ratio = math.log(pt / ph)
            relative_low = math.exp(log_ratio - z * se_log) - 1
            relative_high = math.exp(log_ratio + z * se_log) - 1
    return Lift(
        absolute, absolute - z * se, absolute + z * se, relative, relative_low, relative_high
    )


def sample_ratio_mismatch(
    treatment_exposed: int, holdout_exposed: int, holdout_share: float
) -> Srm:
    """Whether the exposed split departs from the configured share beyond chance."""
    total = treatment_exposed + holdout_exposed
    if total == 0 or not 0 < holdout_share < 1:
        observed = holdout_exposed / total if total else None
        # With no holdout configured, any held-out exposure is itself a mismatch.
        return Srm(holdout_share, observed, None, None, holdout_share == 0 and holdout_exposed > 0)
    expected_h = total * holdout_share
    expected_t = total - expected_h
    chi = (holdout_exposed - expected_h) ** 2 / expected_h + (
        treatment_exposed - expected_t
    ) ** 2 / expected_t
    p = math.erfc(math.sqrt(chi / 2))  # the chi-square survival function at 1 dof
    return Srm(holdout_share, holdout_exposed / total, chi, p, p < SRM_ALPHA)


@dataclass(frozen=True)
class Period:
    """One day (``day_us``: its 00:00 UTC) or the whole range (``day_us`` None)."""

    day_us: int | None
    treatment: GroupCounts
    holdout: GroupCounts
    lift: Lift


@dataclass(frozen=True)
class Performance:
    """GetAudiencePerformance's answer."""

    audience_key: str
    holdout_share: float
    start_us: int
    end_us: int
    total: Period
    days: tuple[Period, ...]
    sample_ratio: Srm


US_PER_DAY = 86_400_000_000


def summarize(
    audience_key: str,
    holdout_share: float,
    start_us: int,
    end_us: int,
    people: Sequence[tuple[int, bool, bool]],
) -> Performance:
    """The report of `people`: (first exposure instant, held out, converted) each."""
    by_day: dict[int, list[int]] = {}
    totals = [0, 0, 0, 0]  # treatment exposed, converted, holdout exposed, converted
    for at, held, converted in people:
        day = by_day.setdefault(at - at % US_PER_DAY, [0, 0, 0, 0])
        for counts in (day, totals):
            counts[2 if held else 0] += 1
            counts[3 if held else 1] += converted
    days = tuple(_period(day, counts) for day, counts in sorted(by_day.items()))
    return Performance(
        audience_key,
        holdout_share,
        start_us,
        end_us,
        _period(None, totals),
        days,
        sample_ratio_mismatch(totals[0], totals[2], holdout_share),
    )


def _period(day_us: int | None, counts: list[int]) -> Period:
    treatment, holdout = GroupCounts(counts[0], counts[1]), GroupCounts(counts[2], counts[3])
    return Period(day_us, treatment, holdout, lift(treatment, holdout))
