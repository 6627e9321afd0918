"""The audience language: parsing and validation of audience and computed-trait definitions.

A definition arrives as JSON (a condition tree, design.md section 6). ``parse_audience``
turns it into frozen dataclasses or raises ``DefinitionError`` listing *every*
violation as a ``(path, reason)`` pair, so an API caller can fix all mistakes in one
round trip. Paths look like ``all[1].event.count.op``: node keys and field names joined
by dots, list positions in brackets.

The evaluators (``reference.py``, ``sql.py``) only ever see parsed nodes, so they can rely
on the invariants checked here (known operators, well-typed values, sane windows, funnel
references to earlier steps only) and on the limits below (docs/audiences.md, "Limits"),
which keep every definition's evaluation bounded. Nesting is checked without recursion
before anything recursive walks the input, so no input can exhaust the stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from services.shared.request_context import ContextCondition, attribute_problem

__all__ = [
    "ACCOUNT_QUANTIFIERS",
    "COMPUTED_TYPES",
    "COUNT_OPS",
    "FILTER_OPS",
    "US_PER_DAY",
    "US_PER_SECOND",
    "Account",
    "All",
    "AnyOf",
    "AudienceRef",
    "Between",
    "Computed",
    "ComputedRef",
    "ComputedTraitDef",
    "ContextCondition",
    "Count",
    "DefinitionError",
    "Event",
    "Filter",
    "Funnel",
    "FunnelStep",
    "Node",
    "Not",
    "Prediction",
    "StepRef",
    "Trait",
    "TraitRef",
    "Window",
    "Within",
    "audience_refs",
    "computed_refs",
    "computed_trait_dependencies",
    "computed_trait_refs",
    "dependency_layers",
    "dependency_order",
    "find_cycle",
    "has_context",
    "iter_nodes",
    "node_filters",
    "parse_audience",
    "parse_computed_trait",
    "split_path",
    "trait_refs",
    "trait_row_keys",
    "validate_audience",
    "validate_computed_trait",
]

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND

# Operators on values (trait, computed, event property filters).
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
# Operators that may take a dynamic reference instead of a literal: list and presence
# operators are excluded because a referenced value is a single JSON value that must exist.
REF_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "contains", "starts_with"})
# Operators on event counts.
COUNT_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte"})
COMPUTED_TYPES = frozenset(
    {
        "event_count",
        "sum",
        "avg",
        "min",
        "max",
        "first",
        "last",
        "most_frequent",
        "unique_count",
        "unique_list",
    }
)
EVENT_TYPES = frozenset({"track", "page", "screen"})
ACCOUNT_QUANTIFIERS = frozenset({"any", "all", "none"})
PREDICTION_METRICS = {"percentile": (0.0, 100.0), "probability": (0.0, 1.0)}

# Limits: far above what real definitions use (the conformance cases nest 3 deep and use
# at most 6 conditions, 5 list values and 100 days), low enough that evaluation stays
# bounded: each condition, filter and list value becomes SQL that runs per event.
MAX_JSON_DEPTH = 64  # checked first, iteratively: bounds every recursive walk
MAX_DEPTH = 20  # conditions inside conditions (all, any, not, account)
MAX_NODES = 200  # conditions in one definition
MAX_FILTERS = 50  # filters in one `where`
MAX_TOTAL_FILTERS = 200  # filters in one definition
MAX_LIST_VALUES = 1_000  # values of one in / not_in list
# Values of every in / not_in list of a definition: each is one comparison per event or
# trait row, and one query parameter (Postgres takes at most 32,767 per statement).
MAX_TOTAL_LIST_VALUES = 2_000
MAX_NAME_LENGTH = 255  # event, property and trait names; audience/trait/prediction keys
MAX_STRING_LENGTH = 1_000  # a string value compared against
MAX_DAYS = 3_660  # window days (ten years and then some)
MAX_COUNT = 1_000_000  # an event count compared against
MAX_FUNNEL_STEPS = 20
MAX_TOTAL_FUNNEL_STEPS = 40  # steps of every funnel of a definition (each is a self-join)
MAX_WITHIN_SECONDS = MAX_DAYS * 86_400
# Whole numbers are compared as 64-bit integers in SQL.
MAX_INTEGER = 2**63 - 1
# Violations reported per definition: enough to fix a definition in one round trip,
# few enough to fit the error's metadata.
MAX_REPORTED_VIOLATIONS = 20


class DefinitionError(ValueError):
    """A definition broke one or more rules; ``violations`` lists ``(path, reason)``."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{p or '<root>'}: {r}" for p, r in self.violations))


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Within:
    """``{"within_days": D}``: now - D days < t <= now."""

    days: float

    def bounds(self, now_us: int) -> tuple[int, int]:
        """(exclusive lower, inclusive upper) bound in microseconds."""
        return now_us - _days_us(self.days), now_us


@dataclass(frozen=True)
class Between:
    """``{"between_days": [A, B]}``: now - B days < t <= now - A days."""

    start_days: float  # A, the nearer edge
    end_days: float  # B, the farther edge

    def bounds(self, now_us: int) -> tuple[int, int]:
        """(exclusive lower, inclusive upper) bound in microseconds."""
        return now_us - _days_us(self.end_days), now_us - _days_us(self.start_days)


Window = Within | Between


def _days_us(days: float) -> int:
    # Days are exact 86,400-second spans; fractional days round to whole microseconds so
    # both evaluators compare the very same integers.
    if isinstance(days, int):
        return days * US_PER_DAY
    return round(days * US_PER_DAY)


@dataclass(frozen=True)
class StepRef:
    """The value of ``property`` on the event chosen for an earlier funnel step."""

    step: int
    property: str


@dataclass(frozen=True)
class TraitRef:
    """The profile's current value of trait ``trait``."""

    trait: str


@dataclass(frozen=True)
class ComputedRef:
    """The profile's stored value of computed trait ``computed``."""

    computed: str


@dataclass(frozen=True)
class Filter:
    """``{"property": P, "op": OP, "value": V}`` or with ``"ref"`` instead of ``value``."""

    property: str
    op: str
    value: Any = None
    ref: StepRef | TraitRef | ComputedRef | None = None


@dataclass(frozen=True)
class Count:
    op: str = "gte"
    value: int = 1


@dataclass(frozen=True)
class All:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class Event:
    name: str
    type: str = "track"
    where: tuple[Filter, ...] = ()
    count: Count = field(default_factory=Count)
    window: Window | None = None


@dataclass(frozen=True)
class Trait:
    name: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class Computed:
    key: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class AudienceRef:
    key: str


@dataclass(frozen=True)
class Prediction:
    """``{"prediction": {"key": P, "percentile": {"gte": 90}}}``; every bound must hold."""

    key: str
    metric: Literal["percentile", "probability"]
    bounds: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class FunnelStep:
    name: str
    type: str = "track"
    where: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class Funnel:
    steps: tuple[FunnelStep, ...]
    within_seconds: float
    window: Window | None = None
    completed: bool = True

    @property
    def within_us(self) -> int:
        return round(self.within_seconds * US_PER_SECOND)


@dataclass(frozen=True)
class Account:
    """Account-level condition: ``any``/``all``/``none`` of the account's users match.

    Syntax: ``{"account": {"match": "any", "condition": node}}``. ``all`` requires at
    least one user (an empty account is not "all users matching").
    """

    match: str
    condition: Node


Node = (
    All
    | AnyOf
    | Not
    | Event
    | Trait
    | Computed
    | AudienceRef
    | Prediction
    | Funnel
    | Account
    | ContextCondition
)


@dataclass(frozen=True)
class ComputedTraitDef:
    type: str
    event: str
    event_type: str = "track"
    property: str | None = None
    where: tuple[Filter, ...] = ()
    window: Window | None = None


# --------------------------------------------------------------------------- helpers


def split_path(prop: str) -> tuple[str, ...]:
    """A dotted property path as its keys (``shipping.method`` -> ("shipping", "method"))."""
    return tuple(prop.split("."))


def trait_row_keys(name: str) -> tuple[str, ...]:
    """The top-level trait keys a trait name reads: the name itself (a literal key, which
    wins when it holds a value) and, for a dotted name, its first part, whose value the
    rest of the path walks into (``billing.tier`` -> ("billing.tier", "billing"))."""
    root = name.split(".", 1)[0]
    return (name,) if root == name else (name, root)


def _is_number(v: Any) -> bool:
    # A boolean is not a number in the language (JSON true is not 1).
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | bool) or _is_number(v)


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Ctx:
    """Collects violations while walking a definition."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []
        self.unreported = 0
        self.nodes = 0
        self.filters = 0
        self.funnel_steps = 0
        self.list_values = 0

    def err(self, path: str, reason: str) -> None:
        if len(self.violations) < MAX_REPORTED_VIOLATIONS:
            self.violations.append((path, reason))
        else:
            self.unreported += 1

    def failed(self) -> bool:
        return bool(self.violations)

    def found(self) -> int:
        """How many violations so far, reported or not."""
        return len(self.violations) + self.unreported

    def report(self) -> list[tuple[str, str]]:
        """The violations, with a last entry counting those left out."""
        if not self.unreported:
            return self.violations
        return [*self.violations, ("", f"and {self.unreported} more violations")]

    def obj(self, raw: Any, path: str) -> Mapping[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.err(path, f"must be an object, got {_type_name(raw)}")
            return None
        return raw

    def unknown(self, raw: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for k in raw:
            if k not in allowed:
                self.err(_join(path, str(k)), "unknown field")

    def name(self, raw: Mapping[str, Any], key: str, path: str, required: bool = True) -> str:
        if key not in raw:
            if required:
                self.err(_join(path, key), "is required")
            return ""
        v = raw[key]
        if not isinstance(v, str) or not v:
            self.err(_join(path, key), "must be a non-empty string")
            return ""
        if len(v) > MAX_NAME_LENGTH:
            self.err(_join(path, key), f"must be at most {MAX_NAME_LENGTH} characters")
            return ""
        return v


def _too_deep(raw: Any) -> tuple[str, str] | None:
    """The first value nested deeper than MAX_JSON_DEPTH as a violation, else None.

    Iterative on purpose: this runs before anything recursive touches the input.
    """
    stack: list[tuple[Any, str, int]] = [(raw, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path, f"nests deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, Mapping):
            stack.extend((v, _join(path, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def _check_number(v: Any, path: str, ctx: _Ctx) -> bool:
    """Whether a (finite) number literal fits the evaluators; a violation when not."""
    if isinstance(v, int) and not -MAX_INTEGER <= v <= MAX_INTEGER:
        ctx.err(path, f"whole numbers must lie between -{MAX_INTEGER} and {MAX_INTEGER}")
        return False
    return True


def _check_literal(v: Any, path: str, ctx: _Ctx) -> bool:
    """Length and range limits of one scalar literal (a value or a list item)."""
    if isinstance(v, str) and len(v) > MAX_STRING_LENGTH:
        ctx.err(path, f"strings compared against are at most {MAX_STRING_LENGTH} characters")
        return False
    if _is_number(v):
        return _check_number(v, path, ctx)
    return True


# --------------------------------------------------------------------------- parsing


def _parse_window(raw: Any, path: str, ctx: _Ctx) -> Window | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    if len(obj) != 1:
        ctx.err(path, "must have exactly one of within_days, between_days")
        return None
    (kind, val) = next(iter(obj.items()))
    p = _join(path, kind)
    if kind == "within_days":
        if not _is_number(val):
            ctx.err(p, "must be a number")
            return None
        if val <= 0:
            ctx.err(p, "must be greater than 0")
            return None
        if val > MAX_DAYS:
            ctx.err(p, f"must be at most {MAX_DAYS} days")
            return None
        return Within(val)
    if kind == "between_days":
        if not isinstance(val, list) or len(val) != 2 or not all(_is_number(x) for x in val):
            ctx.err(p, "must be a list of two numbers [A, B]")
            return None
        a, b = val
        if a < 0:
            ctx.err(p, "A must not be negative")
            return None
        if a >= b:
            ctx.err(p, "A must be less than B")
            return None
        if b > MAX_DAYS:
            ctx.err(p, f"B must be at most {MAX_DAYS} days")
            return None
        return Between(a, b)
    ctx.err(p, "unknown window; expected within_days or between_days")
    return None


def _check_value(op: str, raw: Mapping[str, Any], path: str, ctx: _Ctx) -> Any:
    """Type-check the literal ``value`` for ``op``; returns it (None when absent/invalid)."""
    vp = _join(path, "value")
    has = "value" in raw
    v = raw.get("value")
    if op in ("exists", "not_exists"):
        if has and v is not None:
            ctx.err(vp, f"{op} takes no value")
        return None
    if not has:
        ctx.err(vp, "is required")
        return None
    if op in NUMERIC_OPS:
        if not _is_number(v):
            ctx.err(vp, f"{op} needs a number, got {_type_name(v)}")
            return None
    elif op in ("in", "not_in"):
        if not isinstance(v, list):
            ctx.err(vp, f"{op} needs a list, got {_type_name(v)}")
            return None
        if len(v) > MAX_LIST_VALUES:
            ctx.err(vp, f"{op} takes at most {MAX_LIST_VALUES} values, got {len(v)}")
            return None
        ctx.list_values += len(v)
        for i, item in enumerate(v):
            if not _is_scalar(item):
                ctx.err(
                    f"{vp}[{i}]", f"must be a string, number or boolean, got {_type_name(item)}"
                )
            else:
                _check_literal(item, f"{vp}[{i}]", ctx)
        return tuple(v)
    elif op == "starts_with":
        if not isinstance(v, str):
            ctx.err(vp, f"starts_with needs a string, got {_type_name(v)}")
            return None
    elif not _is_scalar(v):  # eq, neq, contains
        # null is "missing" in the language: presence is tested with exists/not_exists.
        ctx.err(vp, f"{op} needs a string, number or boolean, got {_type_name(v)}")
        return None
    return v if _check_literal(v, vp, ctx) else None


def _parse_op(raw: Mapping[str, Any], path: str, ctx: _Ctx, ops: frozenset[str]) -> str:
    op = raw.get("op")
    if "op" not in raw:
        ctx.err(_join(path, "op"), "is required")
        return ""
    if not isinstance(op, str) or op not in ops:
        ctx.err(_join(path, "op"), f"unknown operator {op!r}")
        return ""
    return op


def _parse_filter(raw: Any, path: str, ctx: _Ctx, step_index: int | None) -> Filter | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    ctx.unknown(obj, {"property", "op", "value", "ref"}, path)
    prop = ctx.name(obj, "property", path)
    op = _parse_op(obj, path, ctx, FILTER_OPS)
    if "ref" in obj:
        rp = _join(path, "ref")
        if "value" in obj:
            ctx.err(rp, "give either value or ref, not both")
        if op and op not in REF_OPS:
            ctx.err(_join(path, "op"), f"{op} cannot take a ref")
        ref = _parse_ref(obj["ref"], rp, ctx, step_index)
        if not prop or not op or ref is None:
            return None
        return Filter(prop, op, None, ref)
    if not op:
        return None
    n = ctx.found()
    value = _check_value(op, obj, path, ctx)
    if not prop or ctx.found() != n:
        return None
    return Filter(prop, op, value)


def _parse_ref(
    raw: Any, path: str, ctx: _Ctx, step_index: int | None
) -> StepRef | TraitRef | ComputedRef | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    if "trait" in obj:
        ctx.unknown(obj, {"trait"}, path)
        t = ctx.name(obj, "trait", path)
        return TraitRef(t) if t else None
    if "step" in obj:
        ctx.unknown(obj, {"step", "property"}, path)
        prop = ctx.name(obj, "property", path)
        step = obj["step"]
        sp = _join(path, "step")
        if step_index is None:
            ctx.err(sp, "step references are only allowed in funnel steps")
            return None
        if not isinstance(step, int) or isinstance(step, bool):
            ctx.err(sp, "must be an integer")
            return None
        if not 0 <= step < step_index:
            ctx.err(sp, f"must refer to an earlier step (0..{step_index - 1}), got {step}")
            return None
        return StepRef(step, prop) if prop else None
    if "computed" in obj:
        # Whether the computed trait exists (and, between computed traits, cycles) needs
        # the workspace: definitions.py checks that.
        ctx.unknown(obj, {"computed"}, path)
        k = ctx.name(obj, "computed", path)
        return ComputedRef(k) if k else None
    ctx.err(path, "must have trait, computed or step")
    return None


def _parse_where(
    raw: Mapping[str, Any], path: str, ctx: _Ctx, step: int | None
) -> tuple[Filter, ...]:
    if "where" not in raw:
        return ()
    wp = _join(path, "where")
    w = raw["where"]
    if not isinstance(w, list):
        ctx.err(wp, f"must be a list, got {_type_name(w)}")
        return ()
    if len(w) > MAX_FILTERS:
        ctx.err(wp, f"takes at most {MAX_FILTERS} filters, got {len(w)}")
        return ()
    ctx.filters += len(w)
    out = [_parse_filter(f, f"{wp}[{i}]", ctx, step) for i, f in enumerate(w)]
    return tuple(f for f in out if f is not None)


def _event_type(raw: Mapping[str, Any], key: str, path: str, ctx: _Ctx) -> str:
    t = raw.get(key, "track")
    if t not in EVENT_TYPES:
        ctx.err(_join(path, key), f"unknown event type {t!r}; expected track, page or screen")
        return "track"
    return t


def _parse_event(raw: Any, path: str, ctx: _Ctx) -> Event | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    ctx.unknown(obj, {"name", "type", "where", "count", "window"}, path)
    name = ctx.name(obj, "name", path)
    etype = _event_type(obj, "type", path, ctx)
    where = _parse_where(obj, path, ctx, None)
    count = Count()
    if "count" in obj:
        cp = _join(path, "count")
        c = ctx.obj(obj["count"], cp)
        if c is not None:
            ctx.unknown(c, {"op", "value"}, cp)
            op = _parse_op(c, cp, ctx, COUNT_OPS)
            v = c.get("value")
            if "value" not in c:
                ctx.err(_join(cp, "value"), "is required")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
                ctx.err(_join(cp, "value"), "must be a non-negative integer")
            elif v > MAX_COUNT:
                ctx.err(_join(cp, "value"), f"must be at most {MAX_COUNT}")
            elif op:
                count = Count(op, v)
    window = _parse_window(obj["window"], _join(path, "window"), ctx) if "window" in obj else None
    return Event(name, etype, where, count, window)


def _parse_value_node(
    raw: Any, path: str, ctx: _Ctx, key_field: str
) -> tuple[str, str, Any] | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    ctx.unknown(obj, {key_field, "op", "value"}, path)
    name = ctx.name(obj, key_field, path)
    op = _parse_op(obj, path, ctx, FILTER_OPS)
    value = _check_value(op, obj, path, ctx) if op else None
    return name, op, value


def _parse_prediction(raw: Any, path: str, ctx: _Ctx) -> Prediction | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    ctx.unknown(obj, {"key", *PREDICTION_METRICS}, path)
    key = ctx.name(obj, "key", path)
    metrics = [m for m in PREDICTION_METRICS if m in obj]
    if len(metrics) != 1:
        ctx.err(path, "must have exactly one of percentile, probability")
        return None
    metric = metrics[0]
    mp = _join(path, metric)
    lo, hi = PREDICTION_METRICS[metric]
    b = ctx.obj(obj[metric], mp)
    if b is None:
        return None
    if not b:
        ctx.err(mp, "needs at least one of gt, gte, lt, lte, eq")
    bounds = []
    for op, v in b.items():
        if op not in NUMERIC_OPS | {"eq"}:
            ctx.err(_join(mp, op), f"unknown operator {op!r}")
        elif not _is_number(v):
            ctx.err(_join(mp, op), f"{op} needs a number, got {_type_name(v)}")
        elif not lo <= v <= hi:
            ctx.err(_join(mp, op), f"must be between {lo:g} and {hi:g}")
        else:
            bounds.append((op, v))
    # metric is one of PREDICTION_METRICS' keys, which mypy sees only as str.
    return Prediction(key, metric, tuple(bounds)) if key else None  # type: ignore[arg-type]


def _parse_context(raw: Any, path: str, ctx: _Ctx) -> ContextCondition | None:
    """``{"context": {"attribute": A, "op": OP, "value": V}}``: a condition on the request
    (services/shared/request_context.py lists the attributes)."""
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    ctx.unknown(obj, {"attribute", "op", "value"}, path)
    attribute = ctx.name(obj, "attribute", path)
    if attribute:
        problem = attribute_problem(attribute)
        if problem is not None:
            ctx.err(_join(path, "attribute"), problem)
            attribute = ""
    op = _parse_op(obj, path, ctx, FILTER_OPS)
    if not op:
        return None
    n = ctx.found()
    value = _check_value(op, obj, path, ctx)
    if not attribute or ctx.found() != n:
        return None
    return ContextCondition(attribute, op, value)


def _parse_funnel(raw: Any, path: str, ctx: _Ctx) -> Funnel | None:
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    ctx.unknown(obj, {"steps", "within_seconds", "window", "completed"}, path)
    sp = _join(path, "steps")
    steps: list[FunnelStep] = []
    raw_steps = obj.get("steps")
    if "steps" not in obj:
        ctx.err(sp, "is required")
    elif not isinstance(raw_steps, list):
        ctx.err(sp, f"must be a list, got {_type_name(raw_steps)}")
    elif len(raw_steps) < 2:
        ctx.err(sp, "a funnel needs at least 2 steps")
    elif len(raw_steps) > MAX_FUNNEL_STEPS:
        ctx.err(sp, f"a funnel has at most {MAX_FUNNEL_STEPS} steps, got {len(raw_steps)}")
    else:
        ctx.funnel_steps += len(raw_steps)
        for i, rs in enumerate(raw_steps):
            p = f"{sp}[{i}]"
            s = ctx.obj(rs, p)
            if s is None:
                continue
            for k in s:
                if k in ("count", "window"):
                    ctx.err(_join(p, k), "not allowed in a funnel step")
                elif k not in ("name", "type", "where"):
                    ctx.err(_join(p, str(k)), "unknown field")
            steps.append(
                FunnelStep(
                    ctx.name(s, "name", p),
                    _event_type(s, "type", p, ctx),
                    _parse_where(s, p, ctx, i),
                )
            )
    wsp = _join(path, "within_seconds")
    within: Any = obj.get("within_seconds")  # JSON: checked below
    if "within_seconds" not in obj:
        ctx.err(wsp, "is required")
        within = 0
    elif not _is_number(within) or within <= 0:
        ctx.err(wsp, "must be a number greater than 0")
        within = 0
    elif within > MAX_WITHIN_SECONDS:
        ctx.err(wsp, f"must be at most {MAX_WITHIN_SECONDS} ({MAX_DAYS} days)")
        within = 0
    window = _parse_window(obj["window"], _join(path, "window"), ctx) if "window" in obj else None
    completed = obj.get("completed", True)
    if not isinstance(completed, bool):
        ctx.err(_join(path, "completed"), "must be true or false")
        completed = True
    return Funnel(tuple(steps), within, window, completed)


def _parse_node(raw: Any, path: str, ctx: _Ctx, depth: int = 1) -> Node | None:
    if depth > MAX_DEPTH:
        ctx.err(path, f"conditions nest at most {MAX_DEPTH} levels deep")
        return None
    ctx.nodes += 1
    obj = ctx.obj(raw, path)
    if obj is None:
        return None
    if len(obj) != 1:
        ctx.err(path, f"a node must have exactly one key, got {sorted(map(str, obj))}")
        return None
    (kind, body) = next(iter(obj.items()))
    p = _join(path, kind)
    if kind in ("all", "any"):
        if not isinstance(body, list):
            ctx.err(p, f"must be a list, got {_type_name(body)}")
            return None
        if not body:
            ctx.err(p, "must not be empty")
            return None
        if len(body) > MAX_NODES:
            ctx.err(p, f"a definition has at most {MAX_NODES} conditions, got {len(body)} here")
            return None
        kids = [_parse_node(c, f"{p}[{i}]", ctx, depth + 1) for i, c in enumerate(body)]
        children = tuple(k for k in kids if k is not None)
        return All(children) if kind == "all" else AnyOf(children)
    if kind == "not":
        child = _parse_node(body, p, ctx, depth + 1)
        return Not(child) if child is not None else None
    if kind == "event":
        return _parse_event(body, p, ctx)
    if kind == "trait":
        r = _parse_value_node(body, p, ctx, "name")
        return Trait(*r) if r else None
    if kind == "computed":
        r = _parse_value_node(body, p, ctx, "key")
        return Computed(*r) if r else None
    if kind == "audience":
        o = ctx.obj(body, p)
        if o is None:
            return None
        ctx.unknown(o, {"key"}, p)
        key = ctx.name(o, "key", p)
        return AudienceRef(key)
    if kind == "prediction":
        return _parse_prediction(body, p, ctx)
    if kind == "funnel":
        return _parse_funnel(body, p, ctx)
    if kind == "context":
        return _parse_context(body, p, ctx)
    if kind == "account":
        o = ctx.obj(body, p)
        if o is None:
            return None
        ctx.unknown(o, {"match", "condition"}, p)
        m = o.get("match")
        if m not in ACCOUNT_QUANTIFIERS:
            ctx.err(_join(p, "match"), f"unknown quantifier {m!r}; expected any, all or none")
        if "condition" not in o:
            ctx.err(_join(p, "condition"), "is required")
            return None
        inner = _parse_node(o["condition"], _join(p, "condition"), ctx, depth + 1)
        if inner is not None and any(isinstance(n, Account) for n in iter_nodes(inner)):
            ctx.err(_join(p, "condition"), "account conditions cannot be nested")
        if inner is not None and has_context(inner):
            # An account's users are not the request being served.
            ctx.err(_join(p, "condition"), "context conditions cannot go inside an account")
        return Account(m, inner) if inner is not None and m in ACCOUNT_QUANTIFIERS else None
    ctx.err(p, "unknown node type")
    return None


def _parse_definition(raw: Any, ctx: _Ctx) -> Node | None:
    deep = _too_deep(raw)
    if deep is not None:
        ctx.err(*deep)
        return None
    node = _parse_node(raw, "", ctx)
    _check_totals(ctx)
    return node


def _check_totals(ctx: _Ctx) -> None:
    """The limits on a whole definition, reported at its root."""
    totals = (
        (ctx.nodes, MAX_NODES, "conditions"),
        (ctx.filters, MAX_TOTAL_FILTERS, "filters"),
        (ctx.funnel_steps, MAX_TOTAL_FUNNEL_STEPS, "funnel steps"),
        (ctx.list_values, MAX_TOTAL_LIST_VALUES, "values in in and not_in lists"),
    )
    for found, limit, what in totals:
        if found > limit:
            ctx.err("", f"a definition has at most {limit} {what}, got {found}")


def validate_audience(raw: Any) -> list[tuple[str, str]]:
    """Every violation of ``raw`` as ``(path, reason)``; empty when it is valid."""
    ctx = _Ctx()
    _parse_definition(raw, ctx)
    return ctx.report()


def parse_audience(raw: Any) -> Node:
    """Parse an audience condition tree; raises ``DefinitionError`` listing all violations."""
    ctx = _Ctx()
    node = _parse_definition(raw, ctx)
    if ctx.failed() or node is None:
        raise DefinitionError(ctx.report() or [("", "invalid definition")])
    return node


def _parse_computed(raw: Any, ctx: _Ctx) -> ComputedTraitDef | None:
    deep = _too_deep(raw)
    if deep is not None:
        ctx.err(*deep)
        return None
    obj = ctx.obj(raw, "")
    if obj is None:
        return None
    ctx.unknown(obj, {"type", "event", "event_type", "property", "where", "window"}, "")
    t = obj.get("type")
    if "type" not in obj:
        ctx.err("type", "is required")
    elif t not in COMPUTED_TYPES:
        ctx.err("type", f"unknown computed trait type {t!r}")
    event = ctx.name(obj, "event", "")
    etype = _event_type(obj, "event_type", "", ctx)
    prop = None
    if t == "event_count":
        if "property" in obj:
            ctx.err("property", "event_count takes no property")
    elif t in COMPUTED_TYPES:
        prop = ctx.name(obj, "property", "") or None
    # Filters may compare with the profile's traits (``ref.trait``); step refs are
    # funnel-only, so the parser rejects them here as it does in event conditions.
    where = _parse_where(obj, "", ctx, None)
    window = _parse_window(obj["window"], "window", ctx) if "window" in obj else None
    _check_totals(ctx)
    if t not in COMPUTED_TYPES or not event:
        return None
    return ComputedTraitDef(t, event, etype, prop, where, window)


def validate_computed_trait(raw: Any) -> list[tuple[str, str]]:
    """Every violation of a computed-trait definition as ``(path, reason)``."""
    ctx = _Ctx()
    _parse_computed(raw, ctx)
    return ctx.report()


def parse_computed_trait(raw: Any) -> ComputedTraitDef:
    """Parse a computed-trait definition; raises ``DefinitionError``."""
    ctx = _Ctx()
    d = _parse_computed(raw, ctx)
    if ctx.failed() or d is None:
        raise DefinitionError(ctx.report() or [("", "invalid definition")])
    return d


# --------------------------------------------------------------------------- analysis


def iter_nodes(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children."""
    yield node
    if isinstance(node, All | AnyOf):
        for c in node.children:
            yield from iter_nodes(c)
    elif isinstance(node, Not):
        yield from iter_nodes(node.child)
    elif isinstance(node, Account):
        yield from iter_nodes(node.condition)


def has_context(node: Node) -> bool:
    """Whether a parsed definition has context conditions (a context audience's)."""
    return any(isinstance(n, ContextCondition) for n in iter_nodes(node))


def audience_refs(node: Node | Any) -> set[str]:
    """Keys of the audiences a definition (parsed, or raw JSON) refers to."""
    if not isinstance(
        node,
        All
        | AnyOf
        | Not
        | Event
        | Trait
        | Computed
        | AudienceRef
        | Prediction
        | Funnel
        | Account
        | ContextCondition,
    ):
        return _raw_audience_refs(node)
    return {n.key for n in iter_nodes(node) if isinstance(n, AudienceRef)}


def _raw_audience_refs(raw: Any) -> set[str]:
    # Works on unvalidated JSON (a stored definition may predate the limits), so it
    # walks with a stack of its own rather than by recursion.
    out: set[str] = set()
    stack = [raw]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            for k, v in value.items():
                if k == "audience" and isinstance(v, Mapping) and isinstance(v.get("key"), str):
                    out.add(v["key"])
                else:
                    stack.append(v)
        elif isinstance(value, list):
            stack.extend(value)
    return out


def node_filters(n: Node) -> tuple[Filter, ...]:
    """The filters of one node itself (an event's, every funnel step's); none for others."""
    if isinstance(n, Event):
        return n.where
    if isinstance(n, Funnel):
        return tuple(f for s in n.steps for f in s.where)
    return ()


def _refs(
    node: Node, condition: type[Computed] | type[Trait], ref: type[ComputedRef] | type[TraitRef]
) -> set[str]:
    """What a definition reads of one kind: the keys or names of its `condition` nodes
    and of its filters' `ref`s of that kind (event conditions, funnel steps)."""
    out: set[str] = set()
    for n in iter_nodes(node):
        if isinstance(n, condition):
            out.add(n.key if isinstance(n, Computed) else n.name)
        for f in node_filters(n):
            if isinstance(f.ref, ref):
                out.add(f.ref.computed if isinstance(f.ref, ComputedRef) else f.ref.trait)
    return out


def computed_refs(node: Node) -> set[str]:
    """Keys of the computed traits a definition reads (conditions and ``ref.computed``)."""
    return _refs(node, Computed, ComputedRef)


def trait_refs(node: Node) -> set[str]:
    """Names of the profile traits a definition reads (conditions and ``ref.trait``)."""
    return _refs(node, Trait, TraitRef)


def computed_trait_refs(defn: ComputedTraitDef) -> set[str]:
    """Names of the profile traits a computed trait's filters compare with (``ref.trait``)."""
    return {f.ref.trait for f in defn.where if isinstance(f.ref, TraitRef)}


def computed_trait_dependencies(defn: ComputedTraitDef) -> set[str]:
    """Keys of the computed traits a computed trait's filters compare with
    (``ref.computed``): they are evaluated before it."""
    return {f.ref.computed for f in defn.where if isinstance(f.ref, ComputedRef)}


RefsOf = Callable[[Any], Collection[str]]


def find_cycle(definitions: Mapping[str, Any], refs: RefsOf = audience_refs) -> str | None:
    """The first reference cycle among ``definitions`` (key -> parsed or raw
    definition), spelled out like ``a -> b -> a``; None when there is none. ``refs``
    gives the keys a definition references: audiences by default, or computed traits'
    ``ref.computed`` keys among computed traits.

    To check an update, pass the stored definitions with the new one substituted.
    References to keys missing from the mapping are ignored here (they are a separate
    "unknown audience" error for the caller).
    """
    graph = {k: sorted(refs(v)) for k, v in definitions.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(k: str, stack: list[str]) -> str | None:
        state[k] = 1
        stack.append(k)
        for d in graph.get(k, []):
            if d not in graph:
                continue
            if state.get(d) == 1:
                cyc = [*stack[stack.index(d) :], d]
                return " -> ".join(cyc)
            if d not in state:
                found = visit(d, stack)
                if found:
                    return found
        stack.pop()
        state[k] = 2
        return None

    for k in sorted(graph):
        if k not in state:
            found = visit(k, [])
            if found:
                return found
    return None


def dependency_order(
    definitions: Mapping[str, Any], refs: RefsOf = audience_refs, what: str = "audience"
) -> list[str]:
    """Keys ordered so that every definition comes after those it references (``refs``
    as in ``find_cycle``; ``what`` names the kind in the error).

    Raises ``DefinitionError`` naming the cycle if there is one.
    """
    cyc = find_cycle(definitions, refs)
    if cyc:
        raise DefinitionError([("", f"{what} reference cycle: {cyc}")])
    done: list[str] = []
    seen: set[str] = set()

    def visit(k: str) -> None:
        if k in seen:
            return
        seen.add(k)
        for d in sorted(refs(definitions[k])):
            if d in definitions:
                visit(d)
        done.append(k)

    for k in sorted(definitions):
        visit(k)
    return done


def dependency_layers(definitions: Mapping[str, Any]) -> list[list[str]]:
    """``dependency_order`` grouped: each layer holds the audiences whose references all
    lie in earlier layers, so a layer can be evaluated together once those are written.

    Raises ``DefinitionError`` naming the cycle if there is one.
    """
    depth: dict[str, int] = {}
    for k in dependency_order(definitions):
        refs = [d for d in audience_refs(definitions[k]) if d in definitions]
        depth[k] = 1 + max((depth[d] for d in refs), default=-1)
    layers: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for k in sorted(depth):
        layers[depth[k]].append(k)
    return layers
