"""What a model's features are: the spec a model is trained with and scored with.

Every feature is computed at a cutoff from events strictly at or before it (never from
the label period after it): per (type, event name) counts over 1/7/30/90-day windows,
recency, frequency, tenure, active days and, when the workspace's events carry a
numeric ``revenue`` property, revenue sums. The spec is chosen once, at training time,
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
REVENUE_FEATURES = ("revenue_sum", "revenue_sum_90d")


@dataclass(frozen=True)
class FeatureSpec:
    """The feature columns of a model: which events are counted, whether revenue is."""

    event_keys: tuple[tuple[str, str], ...]  # (type, name)
    has_revenue: bool

    def names(self) -> list[str]:
        """Human-readable feature names, in column order (also the reasons' words)."""
        counts = [
            f"{name if kind == 'track' else kind + ':' + name} count {days}d"
            for kind, name in self.event_keys
            for days in WINDOW_DAYS
        ]
        return counts + list(RFM_FEATURES) + (list(REVENUE_FEATURES) if self.has_revenue else [])

    def as_json(self) -> dict[str, Any]:
        """The spec as stored with a model."""
        return {"event_keys": [list(k) for k in self.event_keys], "has_revenue": self.has_revenue}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureSpec:
        """The spec a model was stored with."""
        return cls(tuple((k[0], k[1]) for k in raw["event_keys"]), bool(raw["has_revenue"]))

    def column(self, name: str) -> int:
        """Index of the named feature column."""
        return self.names().index(name)
