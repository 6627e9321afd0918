"""Request-time audiences: the context of one request and the conditions on it.

A *context audience* is an audience whose definition has ``context`` conditions: on
attributes of the request an app is serving (country, device, page, UTM parameters,
the visitor's local hour, ...), which the caller supplies with GetProfile. It has no
stored members; the profile service evaluates it per request from the profile's stored
audience memberships (already in the hot state it reads) and the context.

Two services need this code: segmentation validates and publishes the definitions,
the profile service evaluates them, so it lives here, in the library both may import
(a service never imports another). The language's parser (segmentation's
``language.py``) builds ``ContextCondition`` nodes with the checks below; the compiled
form the profile service evaluates is the validated JSON of the definition, which
``compile_definition`` turns into closures once per version of a workspace's
definitions (docs/audiences.md, "Context audiences").

Value semantics are the language's (design.md section 6): equality by JSON type,
numeric operators on numbers only, a missing attribute matching only ``not_exists``,
``neq`` and ``not_in``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "CONTEXT_ATTRIBUTES",
    "CUSTOM_PREFIX",
    "MAX_CUSTOM_KEYS",
    "MAX_CUSTOM_KEY_LENGTH",
    "MAX_VALUE_LENGTH",
    "CompiledAudiences",
    "ContextCondition",
    "attribute_problem",
    "build_context",
    "compile_definition",
    "compile_workspace",
    "context_value",
    "match_value",
]

# Attributes a caller may send, with the type of their value. ``local_hour`` (0-23) and
# ``local_weekday`` (1 = Monday .. 7 = Sunday, ISO) are derived from the request's
# instant in its ``time_zone``: apps send where the visitor is, not what time it is.
STRING_ATTRIBUTES = (
    "country",
    "region",
    "city",
    "device_type",
    "os",
    "browser",
    "language",
    "referrer",
    "page_url",
    "page_path",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "time_zone",
)
DERIVED_ATTRIBUTES = ("local_hour", "local_weekday")
CONTEXT_ATTRIBUTES = frozenset(STRING_ATTRIBUTES + DERIVED_ATTRIBUTES)
UTM_KEYS = ("source", "medium", "campaign", "term", "content")
# Free-form keys: ``custom.<key>`` in conditions, ``custom`` (a JSON object of scalars)
# in the request.
CUSTOM_PREFIX = "custom."
MAX_CUSTOM_KEYS = 50
MAX_CUSTOM_KEY_LENGTH = 64
# A URL can be long; anything longer than this is not a page a condition should match.
MAX_VALUE_LENGTH = 2048


def attribute_problem(attribute: str) -> str | None:
    """Why ``attribute`` cannot be named in a context condition, or None if it can."""
    if attribute in CONTEXT_ATTRIBUTES:
        return None
    if attribute.startswith(CUSTOM_PREFIX):
        key = attribute[len(CUSTOM_PREFIX) :]
        if not key:
            return "custom attributes are named custom.<key>"
        if len(key) > MAX_CUSTOM_KEY_LENGTH:
            return f"custom keys are at most {MAX_CUSTOM_KEY_LENGTH} characters"
        return None
    known = ", ".join(sorted(CONTEXT_ATTRIBUTES))
    return f"unknown context attribute {attribute!r}; expected one of {known} or custom.<key>"


@dataclass(frozen=True)
class ContextCondition:
    """``{"context": {"attribute": A, "op": OP, "value": V}}``: a condition on the request."""

    attribute: str
    op: str
    value: Any = None


# --------------------------------------------------------------------------- values


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _json_equal(a: Any, b: Any) -> bool:
    # Context values and operands are scalars: equal when of one JSON type and equal
    # (1 equals 1.0; True is not 1).
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a):
        return _is_number(b) and a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def match_value(op: str, actual: Any, operand: Any) -> bool:
    """The language's value operators on a context value (None: missing)."""
    if actual is None:
        return op in ("not_exists", "neq", "not_in")
    if op == "exists":
        return True
    if op == "not_exists":
        return False
    if op == "eq":
        return _json_equal(actual, operand)
    if op == "neq":
        return not _json_equal(actual, operand)
    if op in ("gt", "gte", "lt", "lte"):
        if not (_is_number(actual) and _is_number(operand)):
            return False
        if op == "gt":
            return bool(actual > operand)
        if op == "gte":
            return bool(actual >= operand)
        if op == "lt":
            return bool(actual < operand)
        return bool(actual <= operand)
    if op == "in":
        return any(_json_equal(actual, x) for x in operand)
    if op == "not_in":
        return not any(_json_equal(actual, x) for x in operand)
    if op == "contains":
        return isinstance(actual, str) and isinstance(operand, str) and operand in actual
    if op == "starts_with":
        return isinstance(actual, str) and isinstance(operand, str) and actual.startswith(operand)
    raise ValueError(f"unknown operator {op!r}")


def context_value(context: Mapping[str, Any], attribute: str) -> Any:
    """The request's value of ``attribute`` (None when the request did not give it)."""
    return context.get(attribute)


# --------------------------------------------------------------------------- requests


def build_context(
    fields: Mapping[str, Any],
    custom: Any,
    now_us: int,
    field_prefix: str = "context",
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A request's context as ``attribute -> value`` and the problems found, each as
    ``(field, reason)`` under ``field_prefix`` (empty when the context is valid).

    ``fields`` holds the named attributes (empty strings and None mean "not given";
    ``utm`` may be a mapping of source/medium/campaign/term/content), ``custom`` the
    free-form keys (a mapping of scalars, or None). ``local_hour`` and
    ``local_weekday`` are derived from ``now_us`` in ``time_zone`` (absent without one).
    """
    problems: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    for name, value in fields.items():
        path = f"{field_prefix}.{name}"
        if value is None or value == "":
            continue
        if name == "utm":
            if not isinstance(value, Mapping):
                problems.append((path, "must be an object of source, medium, campaign, ..."))
                continue
            for k, v in value.items():
                if k not in UTM_KEYS:
                    problems.append((f"{path}.{k}", "unknown UTM parameter"))
                elif v not in (None, ""):
                    _string(out, f"utm_{k}", v, f"{path}.{k}", problems)
            continue
        if name not in STRING_ATTRIBUTES:
            problems.append((path, "unknown context attribute"))
            continue
        _string(out, name, value, path, problems)
    zone = out.get("time_zone")
    if zone is not None:
        try:
            local = datetime.fromtimestamp(now_us / 1_000_000, UTC).astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            problems.append((f"{field_prefix}.time_zone", "unknown IANA time zone"))
        else:
            out["local_hour"] = local.hour
            out["local_weekday"] = local.isoweekday()
    if custom is not None:
        _custom(out, custom, f"{field_prefix}.custom", problems)
    return out, problems


def _string(
    out: dict[str, Any], name: str, value: Any, path: str, problems: list[tuple[str, str]]
) -> None:
    if not isinstance(value, str):
        problems.append((path, "must be a string"))
    elif len(value) > MAX_VALUE_LENGTH:
        problems.append((path, f"must be at most {MAX_VALUE_LENGTH} characters"))
    else:
        out[name] = value


def _custom(out: dict[str, Any], custom: Any, path: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(custom, Mapping):
        problems.append((path, "must be a JSON object"))
        return
    if len(custom) > MAX_CUSTOM_KEYS:
        problems.append((path, f"takes at most {MAX_CUSTOM_KEYS} keys, got {len(custom)}"))
        return
    for key, value in custom.items():
        p = f"{path}.{key}"
        if not isinstance(key, str) or not key or len(key) > MAX_CUSTOM_KEY_LENGTH:
            problems.append((p, f"keys are 1 to {MAX_CUSTOM_KEY_LENGTH} characters"))
        elif value is None:
            continue  # null is missing in the language
        elif isinstance(value, str):
            _string(out, CUSTOM_PREFIX + key, value, p, problems)
        elif isinstance(value, bool) or (_is_number(value) and math.isfinite(value)):
            out[CUSTOM_PREFIX + key] = value
        else:
            problems.append((p, "must be a string, number or boolean"))


# --------------------------------------------------------------------------- compiled form

# A compiled node: (context, memberships so far) -> bool. ``memberships`` holds the
# stored audience keys of the profile and the context audiences already decided.
Predicate = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


def compile_definition(raw: Any) -> Predicate:
    """A validated context-audience definition (JSON: all/any/not/context/audience
    nodes) as one predicate. Segmentation validated it before publishing; a node of
    another kind here is a bug in the publisher, so it raises ValueError."""
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ValueError(f"not a node: {raw!r}")
    ((kind, body),) = raw.items()
    if kind in ("all", "any"):
        kids = tuple(compile_definition(c) for c in body)
        if kind == "all":
            return lambda ctx, mem: all(k(ctx, mem) for k in kids)
        return lambda ctx, mem: any(k(ctx, mem) for k in kids)
    if kind == "not":
        inner = compile_definition(body)
        return lambda ctx, mem: not inner(ctx, mem)
    if kind == "audience":
        key = body["key"]
        return lambda ctx, mem: key in mem
    if kind == "context":
        return _compile_condition(body["attribute"], body["op"], body.get("value"))
    raise ValueError(f"a context audience cannot hold {kind!r} nodes")


def _compile_condition(attribute: str, op: str, operand: Any) -> Predicate:
    # The common shapes get a closure without the operator dispatch: this runs for
    # every condition of every context audience on every GetProfile with a context.
    if op == "eq" and isinstance(operand, str):
        return lambda ctx, mem: ctx.get(attribute) == operand
    if op == "in" and all(isinstance(x, str) for x in operand):
        allowed = frozenset(operand)
        return lambda ctx, mem: (
            (v := ctx.get(attribute)) is not None and (isinstance(v, str) and v in allowed)
        )
    if op == "exists":
        return lambda ctx, mem: ctx.get(attribute) is not None
    values = tuple(operand) if isinstance(operand, list | tuple) else operand
    return lambda ctx, mem: match_value(op, ctx.get(attribute), values)


@dataclass(frozen=True)
class CompiledAudiences:
    """A workspace's context audiences, compiled once per published version: evaluated
    in dependency order, so one may refer to another."""

    version: str
    audiences: tuple[tuple[str, Predicate], ...]

    def evaluate(self, context: Mapping[str, Any], stored: Sequence[str]) -> list[str]:
        """Keys of the context audiences this request qualifies for, in evaluation order."""
        if not self.audiences:
            return []
        members: dict[str, Any] = dict.fromkeys(stored, True)
        out = []
        for key, predicate in self.audiences:
            if predicate(context, members):
                members[key] = True
                out.append(key)
        return out


def compile_workspace(version: str, ordered: Sequence[tuple[str, Any]]) -> CompiledAudiences:
    """Compile ``(key, definition)`` pairs given in dependency order."""
    return CompiledAudiences(version, tuple((k, compile_definition(d)) for k, d in ordered))
