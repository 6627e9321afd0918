"""A recommendation object and its validation (no gRPC, no SQL)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from services.shared.errors import FieldViolation, InvalidArgument

DEFAULT_SIZE = 10
MAX_SIZE = 100
MAX_ITEM_EVENTS = 20
MAX_EXCLUSIONS = 20
MAX_EXCLUSION_VALUES = 1000
MAX_WEIGHT = 1000.0
_KEY = re.compile(r"[a-z0-9_]{1,64}")


class TrainingState(Enum):
    """Where an object's training stands."""

    NEVER_TRAINED = "never_trained"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class ItemEvent:
    """An item event and the weight of one occurrence."""

    event_name: str
    weight: float


@dataclass(frozen=True)
class ItemExclusion:
    """Items whose latest `property` is one of `values` (as text) are never recommended."""

    property: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class TrainingStatus:
    """The last (or running) training of an object."""

    state: TrainingState = TrainingState.NEVER_TRAINED
    progress: float = 0.0
    started_at_us: int | None = None
    finished_at_us: int | None = None
    profiles: int = 0
    items: int = 0
    interactions: int = 0
    error: str | None = None
    # A training asked for and not started yet (the training job starts it).
    requested_at_us: int | None = None


@dataclass(frozen=True)
class RecommendationModel:
    """Which events make an item interaction, which property names the item, how many."""

    key: str
    item_events: tuple[ItemEvent, ...]
    item_property: str
    size: int = DEFAULT_SIZE
    recommend_consumed: bool = False
    exclusions: tuple[ItemExclusion, ...] = ()
    created_at_us: int = 0
    training: TrainingStatus = field(default_factory=TrainingStatus)
    # '' or one of item_events' names: the ranker learns to predict the next items of
    # this event (e.g. orders), not of any item event.
    goal_event: str = ""

    def weight_of(self) -> dict[str, float]:
        """Event name -> weight."""
        return {e.event_name: e.weight for e in self.item_events}


def key_violations(key: str, field_name: str = "key") -> list[FieldViolation]:
    """What is wrong with an object key (none when it is well formed)."""
    if not _KEY.fullmatch(key):
        return [FieldViolation(field_name, "1-64 characters of a-z, 0-9 and _")]
    return []


def parse_key(key: str, field_name: str = "key") -> str:
    """A well-formed key, or InvalidArgument."""
    violations = key_violations(key, field_name)
    if violations:
        raise InvalidArgument(f"{field_name}: malformed", violations)
    return key


def _name_violation(value: str, field_name: str) -> FieldViolation | None:
    if not 1 <= len(value) <= 255:
        return FieldViolation(field_name, "must be 1-255 characters")
    return None


def validate(model: RecommendationModel, field_name: str = "model") -> RecommendationModel:
    """The object with defaults applied (size 0 -> 10, weight 0 -> 1), or InvalidArgument
    naming every bad field."""
    violations = key_violations(model.key, f"{field_name}.key")
    if not model.item_events:
        violations.append(FieldViolation(f"{field_name}.item_events", "at least one item event"))
    if len(model.item_events) > MAX_ITEM_EVENTS:
        violations.append(
            FieldViolation(f"{field_name}.item_events", f"at most {MAX_ITEM_EVENTS} events")
        )
    seen: set[str] = set()
    events: list[ItemEvent] = []
    for index, event in enumerate(model.item_events):
        where = f"{field_name}.item_events[{index}]"
        bad_name = _name_violation(event.event_name, f"{where}.event_name")
        if bad_name:
            violations.append(bad_name)
        elif event.event_name in seen:
            violations.append(FieldViolation(f"{where}.event_name", "listed twice"))
        seen.add(event.event_name)
        # NaN fails both comparisons, so it is refused too.
        if not (0 <= event.weight <= MAX_WEIGHT):
            violations.append(
                FieldViolation(f"{where}.weight", f"must be between 0 and {MAX_WEIGHT} (0 means 1)")
            )
        events.append(ItemEvent(event.event_name, event.weight or 1.0))
    bad_property = _name_violation(model.item_property, f"{field_name}.item_property")
    if bad_property:
        violations.append(bad_property)
    if not 0 <= model.size <= MAX_SIZE:
        violations.append(FieldViolation(f"{field_name}.size", f"must be between 0 and {MAX_SIZE}"))
    if len(model.exclusions) > MAX_EXCLUSIONS:
        violations.append(
            FieldViolation(f"{field_name}.exclusions", f"at most {MAX_EXCLUSIONS} exclusions")
        )
    for index, exclusion in enumerate(model.exclusions):
        where = f"{field_name}.exclusions[{index}]"
        bad = _name_violation(exclusion.property, f"{where}.property")
        if bad:
            violations.append(bad)
        if not 1 <= len(exclusion.values) <= MAX_EXCLUSION_VALUES:
            violations.append(FieldViolation(f"{where}.values", f"1-{MAX_EXCLUSION_VALUES} values"))
    if model.goal_event:
        bad_goal = _name_violation(model.goal_event, f"{field_name}.goal_event")
        if bad_goal:
            violations.append(bad_goal)
        elif model.goal_event not in seen:
            violations.append(
                FieldViolation(f"{field_name}.goal_event", "must be one of item_events' names")
            )
    if violations:
        raise InvalidArgument(f"{field_name}: invalid recommendation object", violations)
    return RecommendationModel(
        key=model.key,
        item_events=tuple(events),
        item_property=model.item_property,
        size=model.size or DEFAULT_SIZE,
        recommend_consumed=model.recommend_consumed,
        exclusions=model.exclusions,
        created_at_us=model.created_at_us,
        goal_event=model.goal_event,
    )
