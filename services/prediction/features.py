"""What a model's features are: the spec a model is trained with and scored with.

Every feature is computed at a cutoff from events at or before it (never from the
label period after it): per (type, event name) counts over 1/7/30/90-day windows,
recency, frequency, tenure, active days, the gaps between active days (last, mean,
spread, longest, and how overdue the next one is), the goal event's own recency and
trend, revenue sums per window when the workspace's events carry a numeric ``revenue``
property, and the most common traits as they stood at the cutoff
(the latest identify call at or before it that set them: numeric traits as numbers,
string traits as LightGBM categories). The spec is chosen once, at training time,
and stored with the model so that scoring computes exactly the same columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WINDOW_DAYS = (1, 7, 30, 90)
# Event names counted per window: the most frequent ones before the cutoff (plus the goal).
MAX_EVENT_NAMES = 25
REVENUE_PROPERTY = "revenue"
# The columns after the per-event counts, in order.
RFM_FEATURES = ("recency_days", "frequency", "tenure_days", "active_days")
# Between consecutive active days (UTC days with an event). Repeat buyers who are
# "due" again buy again (the intuition of BG/NBD): how the last gap, the usual gap and
# the time since the last event compare carries most of the signal on purchase data.
GAP_FEATURES = (
    "last_gap_days",
    "mean_gap_days",
    "gap_spread_days",
    "longest_gap_days",
    "overdue_ratio",  # days since the last event / mean gap
    "active_span_share",  # (first to last event) / tenure
    "active_days_per_30d",
)
# The goal event's own history (any goal filters aside): when it last happened and
# whether it is speeding up (last 30 days against the 90-day rate).
GOAL_FEATURES = ("goal recency_days", "goal active_days", "goal trend 30d/90d")
REVENUE_WINDOW_DAYS = (7, 30, 90)
REVENUE_FEATURES = (
    "revenue_sum",
    "revenue_sum_7d",
    "revenue_sum_30d",
    "revenue_sum_90d",
    "revenue_per_active_day",
)
MAX_TRAITS = 10
# A string trait becomes a category feature when its most common values (each set at
# least MIN_CATEGORY_COUNT times) cover this share of the calls that set it: a plan or a
# country does, an email or a name never does.
MAX_CATEGORIES = 20
MIN_CATEGORY_COUNT = 5
MIN_CATEGORY_COVERAGE = 0.5


@dataclass(frozen=True)
class TraitFeature:
    """One trait as a feature: numeric, or categorical with its known categories (a
    value outside them is missing)."""

    key: str
    categories: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """The feature columns of a model: which events are counted, whether revenue is."""

    event_keys: tuple[tuple[str, str], ...]  # (type, name)
    has_revenue: bool
    traits: tuple[TraitFeature, ...] = ()
    goal_event: str = ""

    def names(self) -> list[str]:
        """Human-readable feature names, in column order (also the reasons' words)."""
        counts = [
            f"{name if kind == 'track' else kind + ':' + name} count {days}d"
            for kind, name in self.event_keys
            for days in WINDOW_DAYS
        ]
        revenue = list(REVENUE_FEATURES) if self.has_revenue else []
        goal = list(GOAL_FEATURES) if self.goal_event else []
        return (
            counts
            + list(RFM_FEATURES)
            + list(GAP_FEATURES)
            + goal
            + revenue
            + [f"trait {t.key}" for t in self.traits]
        )

    def categorical_columns(self) -> list[int]:
        """Indexes of the category-coded trait columns."""
        first = len(self.names()) - len(self.traits)
        return [first + i for i, t in enumerate(self.traits) if t.categories is not None]

    def as_json(self) -> dict[str, Any]:
        """The spec as stored with a model."""
        return {
            "event_keys": [list(k) for k in self.event_keys],
            "has_revenue": self.has_revenue,
            "goal_event": self.goal_event,
            "traits": [
                {"key": t.key, "categories": None if t.categories is None else list(t.categories)}
                for t in self.traits
            ],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureSpec:
        """The spec a model was stored with."""
        return cls(
            tuple((k[0], k[1]) for k in raw["event_keys"]),
            bool(raw["has_revenue"]),
            tuple(
                TraitFeature(t["key"], None if t["categories"] is None else tuple(t["categories"]))
                for t in raw.get("traits", [])
            ),
            str(raw.get("goal_event", "")),
        )

    def value_text(self, column: int, value: float) -> str:
        """A feature value as people read it (a category's name, not its code)."""
        first = len(self.names()) - len(self.traits)
        if column >= first:
            categories = self.traits[column - first].categories
            if categories is not None:
                return categories[int(value)] if value == value else "(none)"
        return f"{value:g}"

    def column(self, name: str) -> int:
        """Index of the named feature column."""
        return self.names().index(name)
