"""Predictions as the domain sees them, and the validation of a new one.

A prediction's goal is a track event by name with optional ``where`` filters in the
audience language's filter syntax (docs/audiences.md): ``{"property": P, "op": OP,
"value": V}``. A goal has no profile or funnel context, so filters compare with literal
values only (``ref`` is refused).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from services.shared.errors import FieldViolation, InvalidArgument

UNTRAINED = "untrained"
TRAINING = "training"
READY = "ready"
FAILED = "failed"

DEFAULT_HORIZON_DAYS = 7
MAX_HORIZON_DAYS = 365
# Same rule as audience and computed-trait keys: prediction conditions name it.
KEY_PATTERN = re.compile(r"^[a-z0-9_]{1,255}$")
MAX_NAME_LENGTH = 255
MAX_FILTERS = 50
MAX_LIST_VALUES = 1_000
# As in the audience language: the filter SQL binds whole numbers as BIGINT.
MAX_INTEGER = 2**63 - 1

FILTER_OPS = frozenset(
    {
        "eq",
        "neq",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "not_in",
        "contains",
        "starts_with",
        "exists",
        "not_exists",
    }
)
NUMERIC_OPS = frozenset({"gt", "gte", "lt", "lte"})


@dataclass(frozen=True)
class GoalFilter:
    """One ``where`` filter of a goal: the event property at ``property`` (dotted path)
    compared with a literal ``value`` (a tuple for in / not_in, None for exists)."""

    property: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class Goal:
    """The event whose occurrence within the horizon is predicted."""

    event: str
    where: tuple[GoalFilter, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The goal as stored and returned (``{"event": N, "where": [...]}``)."""
        return {
            "event": self.event,
            "where": [
                {"property": f.property, "op": f.op}
                | ({} if f.op in ("exists", "not_exists") else {"value": _plain(f.value)})
                for f in self.where
            ],
        }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Progress:
    """How far the running job is (training or scoring)."""

    done: int = 0
    total: int = 0
    stage: str = ""


@dataclass(frozen=True)
class PredictionSpec:
    """What a caller asks for when creating a prediction."""

    key: str
    name: str
    goal: Goal
    horizon_days: int
    population: str | None


@dataclass
class PredictionRecord:
    """A stored prediction."""

    prediction_id: int
    key: str
    name: str
    goal: Goal
    horizon_days: int
    population: str | None
    state: str
    failure_reason: str
    model_version: int
    trained_at_us: int | None
    scored_at_us: int | None
    created_at_us: int
    updated_at_us: int
    progress: Progress = field(default_factory=Progress)
    attempted_at_us: int | None = None


@dataclass(frozen=True)
class ScoredProfile:
    """A profile's score of a prediction."""

    profile_id: int
    probability: float
    percentile: float
    reasons: tuple[str, ...]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | bool) or _is_number(v)


def _type_name(v: Any) -> str:
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _filter(raw: Any, path: str, out: list[FieldViolation]) -> GoalFilter | None:
    if not isinstance(raw, dict):
        out.append(FieldViolation(path, f"must be an object, got {_type_name(raw)}"))
        return None
    before = len(out)
    for extra in sorted(set(raw) - {"property", "op", "value"}):
        description = (
            "a goal's filters compare with literal values only"
            if extra == "ref"
            else "unknown field"
        )
        out.append(FieldViolation(f"{path}.{extra}", description))
    prop = raw.get("property")
    if not isinstance(prop, str) or not prop:
        out.append(FieldViolation(f"{path}.property", "must be a non-empty string"))
    elif len(prop) > MAX_NAME_LENGTH:
        out.append(
            FieldViolation(f"{path}.property", f"must be at most {MAX_NAME_LENGTH} characters")
        )
    op = raw.get("op")
    if op not in FILTER_OPS:
        out.append(FieldViolation(f"{path}.op", f"unknown operator {op!r}"))
        return None
    value = raw.get("value")
    vp = f"{path}.value"
    if op in ("exists", "not_exists"):
        if value is not None:
            out.append(FieldViolation(vp, f"{op} takes no value"))
        value = None
    elif "value" not in raw:
        out.append(FieldViolation(vp, "is required"))
    elif op in NUMERIC_OPS and not _is_number(value):
        out.append(FieldViolation(vp, f"{op} needs a number, got {_type_name(value)}"))
    elif op in ("in", "not_in"):
        if not isinstance(value, list):
            out.append(FieldViolation(vp, f"{op} needs a list, got {_type_name(value)}"))
        elif len(value) > MAX_LIST_VALUES:
            out.append(FieldViolation(vp, f"{op} takes at most {MAX_LIST_VALUES} values"))
        else:
            for i, item in enumerate(value):
                if not _is_scalar(item):
                    out.append(
                        FieldViolation(
                            f"{vp}[{i}]",
                            f"must be a string, number or boolean, got {_type_name(item)}",
                        )
                    )
            value = tuple(value)
    elif op == "starts_with" and not isinstance(value, str):
        out.append(FieldViolation(vp, f"starts_with needs a string, got {_type_name(value)}"))
    elif not _is_scalar(value):
        out.append(
            FieldViolation(vp, f"{op} needs a string, number or boolean, got {_type_name(value)}")
        )
    if len(out) == before:
        items = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            if _is_number(item) and isinstance(item, int) and abs(item) > MAX_INTEGER:
                out.append(
                    FieldViolation(
                        f"{vp}[{i}]" if isinstance(value, tuple) else vp,
                        f"whole numbers must lie between -{MAX_INTEGER} and {MAX_INTEGER}",
                    )
                )
    if len(out) != before or not isinstance(prop, str):
        return None
    return GoalFilter(prop, op, value)


def parse_goal(raw: Any, path: str, out: list[FieldViolation]) -> Goal | None:
    """The goal of ``raw`` (decoded JSON), appending every problem to ``out``."""
    if not isinstance(raw, dict):
        out.append(FieldViolation(path, f"must be a JSON object, got {_type_name(raw)}"))
        return None
    before = len(out)
    for extra in sorted(set(raw) - {"event", "where"}):
        out.append(FieldViolation(f"{path}.{extra}", "unknown field"))
    event = raw.get("event")
    if not isinstance(event, str) or not event:
        out.append(FieldViolation(f"{path}.event", "must be a non-empty event name"))
    elif len(event) > MAX_NAME_LENGTH:
        out.append(FieldViolation(f"{path}.event", f"must be at most {MAX_NAME_LENGTH} characters"))
    where = raw.get("where", [])
    filters: list[GoalFilter] = []
    if not isinstance(where, list):
        out.append(FieldViolation(f"{path}.where", f"must be a list, got {_type_name(where)}"))
    elif len(where) > MAX_FILTERS:
        out.append(
            FieldViolation(
                f"{path}.where", f"takes at most {MAX_FILTERS} filters, got {len(where)}"
            )
        )
    else:
        for i, item in enumerate(where):
            parsed = _filter(item, f"{path}.where[{i}]", out)
            if parsed is not None:
                filters.append(parsed)
    if len(out) != before:
        return None
    assert isinstance(event, str)
    return Goal(event, tuple(filters))


def validate_spec(
    key: str, name: str, goal_json: Any, horizon_days: int, population: str
) -> PredictionSpec:
    """A PredictionSpec, or InvalidArgument naming every bad field (``prediction.*``)."""
    out: list[FieldViolation] = []
    if not KEY_PATTERN.match(key):
        out.append(
            FieldViolation(
                "prediction.key", "must be 1-255 characters of lowercase letters, digits and _"
            )
        )
    if len(name) > MAX_NAME_LENGTH:
        out.append(
            FieldViolation("prediction.name", f"must be at most {MAX_NAME_LENGTH} characters")
        )
    horizon = horizon_days or DEFAULT_HORIZON_DAYS
    if not 1 <= horizon <= MAX_HORIZON_DAYS:
        out.append(
            FieldViolation(
                "prediction.horizon_days",
                f"must be between 1 and {MAX_HORIZON_DAYS} days (0 means"
                f" {DEFAULT_HORIZON_DAYS}), got {horizon_days}",
            )
        )
    if population and not KEY_PATTERN.match(population):
        out.append(
            FieldViolation(
                "prediction.population",
                "must be an audience key (lowercase letters, digits and _) or empty",
            )
        )
    goal = parse_goal(goal_json, "prediction.goal", out)
    if out or goal is None:
        raise InvalidArgument(
            "invalid prediction: " + "; ".join(f"{v.field}: {v.description}" for v in out), out
        )
    return PredictionSpec(key, name or key, goal, horizon, population or None)
