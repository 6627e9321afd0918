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

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
        if not value:
            if value is None or value == "":
                continue  # not given
        if type(value) is str and name in _STRING_SET:
            # The common case (every RequestContext field): only the length to check.
            if len(value) <= MAX_VALUE_LENGTH:
                out[name] = value
            else:
                problems.append(
                    (f"{field_prefix}.{name}", f"must be at most {MAX_VALUE_LENGTH} characters")
                )
            continue
        path = f"{field_prefix}.{name}"
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
        local = _local_time(zone, now_us)
        if local is None:
            problems.append((f"{field_prefix}.time_zone", "unknown IANA time zone"))
        else:
            out["local_hour"], out["local_weekday"] = local
    if custom is not None:
        _custom(out, custom, f"{field_prefix}.custom", problems)
    return out, problems


_STRING_SET = frozenset(STRING_ATTRIBUTES)


def _local_time(zone: str, now_us: int) -> tuple[int, int] | None:
    """(hour 0-23, ISO weekday 1-7) at `now_us` in IANA `zone`; None if unknown."""
    return _local_time_at_minute(zone, now_us // 60_000_000)


# Every UTC offset is a whole number of minutes, so the local hour and weekday change
# only on a minute boundary: requests of one minute in one zone share the answer.
@functools.lru_cache(maxsize=4096)
def _local_time_at_minute(zone: str, minute: int) -> tuple[int, int] | None:
    now_us = minute * 60_000_000
    try:
        tz = ZoneInfo(zone)  # zoneinfo caches zones: a lookup, not a file read
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # Not a zone name ("../x" is ValueError, a directory like "Europe" OSError).
        return None
    local = datetime.fromtimestamp(now_us // 1_000_000, tz)
    return local.hour, local.isoweekday()


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
Predicate = Callable[[Mapping[str, Any], Collection[str]], bool]


class _Source:
    """Python source of a workspace's predicates, with the literals they compare with
    bound by name (never spliced into the text) and names that are valid identifiers."""

    def __init__(self) -> None:
        self.constants: dict[str, Any] = {"_match": match_value, "_num": (int, float)}
        # attribute -> the local variable holding the request's value of it, read once
        # at the top of the generated function.
        self.attributes: dict[str, str] = {}

    def reads(self) -> list[str]:
        """The generated lines reading each attribute used, once."""
        return [
            f"    {local} = c.get({self.bind(attribute)})"
            for attribute, local in self.attributes.items()
        ]

    def bind(self, value: Any) -> str:
        name = f"_k{len(self.constants)}"
        self.constants[name] = value
        return name

    def node(self, raw: Any) -> str:
        if not isinstance(raw, Mapping) or len(raw) != 1:
            raise ValueError(f"not a node: {raw!r}")
        ((kind, body),) = raw.items()
        if kind in ("all", "any"):
            joiner = " and " if kind == "all" else " or "
            return "(" + joiner.join(self.node(c) for c in body) + ")"
        if kind == "not":
            return f"(not {self.node(body)})"
        if kind == "audience":
            return f"({self.bind(body['key'])} in m)"
        if kind == "context":
            return self.condition(body["attribute"], body["op"], body.get("value"))
        raise ValueError(f"a context audience cannot hold {kind!r} nodes")

    def condition(self, attribute: str, op: str, operand: Any) -> str:
        # The common shapes as plain Python comparisons with the language's meaning
        # (strings compare as strings, a boolean is never a number, missing is None);
        # everything else through match_value.
        get = self.attributes.get(attribute)
        if get is None:
            get = self.attributes[attribute] = f"a{len(self.attributes)}"
        strings = isinstance(operand, list | tuple) and all(isinstance(x, str) for x in operand)
        if op in ("eq", "neq") and isinstance(operand, str):
            return f"({get} {'==' if op == 'eq' else '!='} {self.bind(operand)})"
        if op in ("in", "not_in") and strings:
            return f"({get} {'in' if op == 'in' else 'not in'} {self.bind(frozenset(operand))})"
        if op == "exists":
            return f"({get} is not None)"
        if op == "not_exists":
            return f"({get} is None)"
        if op == "starts_with" and isinstance(operand, str):
            return f"(type(x := {get}) is str and x.startswith({self.bind(operand)}))"
        if op == "contains" and isinstance(operand, str):
            return f"(type(x := {get}) is str and {self.bind(operand)} in x)"
        if op in ("gt", "gte", "lt", "lte") and _is_number(operand):
            sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
            return f"(type(x := {get}) in _num and x {sign} {self.bind(operand)})"
        values = tuple(operand) if isinstance(operand, list | tuple) else operand
        return f"_match({self.bind(op)}, {get}, {self.bind(values)})"


def compile_definition(raw: Any) -> Predicate:
    """A validated context-audience definition (JSON: all/any/not/context/audience
    nodes) as one predicate. Segmentation validated it before publishing; a node of
    another kind here is a bug in the publisher, so it raises ValueError."""
    source = _Source()
    expression = source.node(raw)
    namespace = dict(source.constants)
    lines = ["def _p(c, m):", *source.reads(), f"    return bool({expression})"]
    exec("\n".join(lines), namespace)
    predicate: Predicate = namespace["_p"]
    return predicate


@dataclass(frozen=True)
class CompiledAudiences:
    """A workspace's context audiences, compiled once per published version into one
    function evaluating them in dependency order (so one may refer to another)."""

    version: str
    keys: tuple[str, ...]
    run: Callable[[Mapping[str, Any], Collection[str]], list[str]]

    def evaluate(self, context: Mapping[str, Any], stored: Collection[str]) -> list[str]:
        """Keys of the context audiences this request qualifies for, in evaluation order."""
        return self.run(context, stored) if self.keys else []


def compile_workspace(version: str, ordered: Sequence[tuple[str, Any]]) -> CompiledAudiences:
    """Compile ``(key, definition)`` pairs given in dependency order.

    Generated code rather than a tree of closures: one function call per request
    instead of one per node, which is what keeps 20 audiences of a few conditions each
    to a few microseconds (bench/profile_context.py). Only validated definitions reach
    here, and every literal is bound as a constant, never spliced into the source.
    """
    source = _Source()
    lines = ["def _run(c, stored):", "    m = set(stored)", "    out = []"]
    for key, definition in ordered:
        name = source.bind(key)
        lines.append(f"    if {source.node(definition)}:")
        lines.append(f"        m.add({name}); out.append({name})")
    lines.append("    return out")
    lines[1:1] = source.reads()
    namespace = dict(source.constants)
    exec("\n".join(lines), namespace)
    return CompiledAudiences(version, tuple(k for k, _ in ordered), namespace["_run"])
