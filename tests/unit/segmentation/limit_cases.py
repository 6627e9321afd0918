"""The definition limits (docs/audiences.md, "Limits") as cases: for each, a definition
right at the limit (valid) and one just past it with the violation it must get, as
(path inside the definition, reason). Shared by the validator's unit tests and the API's
integration tests, which expect the same path under the request field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.segmentation.language import (
    MAX_COUNT,
    MAX_DAYS,
    MAX_DEPTH,
    MAX_FILTERS,
    MAX_FUNNEL_STEPS,
    MAX_INTEGER,
    MAX_JSON_DEPTH,
    MAX_LIST_VALUES,
    MAX_NAME_LENGTH,
    MAX_NODES,
    MAX_STRING_LENGTH,
    MAX_TOTAL_FILTERS,
    MAX_TOTAL_FUNNEL_STEPS,
    MAX_TOTAL_LIST_VALUES,
    MAX_WITHIN_SECONDS,
)


@dataclass(frozen=True)
class LimitCase:
    name: str
    at_limit: Any  # valid
    over_limit: Any
    violation: tuple[str, str]  # (path, reason) of over_limit


def event(name: str = "Order Completed", **body: Any) -> dict[str, Any]:
    return {"event": {"name": name, **body}}


def nots(n: int, inner: Any) -> Any:
    """`inner` inside `n` nested `not` conditions (built without recursion)."""
    for _ in range(n):
        inner = {"not": inner}
    return inner


def gt(i: int) -> dict[str, Any]:
    return {"property": "price", "op": "gt", "value": i}


def in_list(n: int, prop: str = "sku") -> dict[str, Any]:
    return {"property": prop, "op": "in", "value": [f"SKU-{i}" for i in range(n)]}


def funnel(steps: int, within: float = 3_600) -> dict[str, Any]:
    return {
        "funnel": {"steps": [{"name": f"Step {i}"} for i in range(steps)], "within_seconds": within}
    }


def any_of(children: list[Any]) -> dict[str, Any]:
    return {"any": children}


def trait(value: Any) -> dict[str, Any]:
    return {"trait": {"name": "plan", "op": "eq", "value": value}}


def dotted(*parts: str) -> str:
    return ".".join(parts)


AUDIENCE_CASES = [
    LimitCase(
        "depth",
        nots(MAX_DEPTH - 1, event()),
        nots(MAX_DEPTH, event()),
        (dotted(*["not"] * MAX_DEPTH), f"conditions nest at most {MAX_DEPTH} levels deep"),
    ),
    LimitCase(
        "json depth (500 nested not)",
        nots(MAX_DEPTH - 1, event()),
        nots(500, event()),
        (dotted(*["not"] * MAX_JSON_DEPTH), f"nests deeper than {MAX_JSON_DEPTH} levels"),
    ),
    LimitCase(
        "conditions",
        any_of([event(f"E{i}") for i in range(MAX_NODES - 1)]),
        any_of([event(f"E{i}") for i in range(MAX_NODES)]),
        ("", f"a definition has at most {MAX_NODES} conditions, got {MAX_NODES + 1}"),
    ),
    LimitCase(
        "branches (1000-branch any)",
        any_of([event(f"E{i}") for i in range(MAX_NODES - 1)]),
        any_of([event(f"E{i}") for i in range(1000)]),
        ("any", f"a definition has at most {MAX_NODES} conditions, got 1000 here"),
    ),
    LimitCase(
        "filters in one where",
        event(where=[gt(i) for i in range(MAX_FILTERS)]),
        event(where=[gt(i) for i in range(MAX_FILTERS + 1)]),
        ("event.where", f"takes at most {MAX_FILTERS} filters, got {MAX_FILTERS + 1}"),
    ),
    LimitCase(
        "filters in all",
        any_of([event(where=[gt(i) for i in range(40)]) for _ in range(MAX_TOTAL_FILTERS // 40)]),
        any_of([event(where=[gt(i) for i in range(41)]) for _ in range(MAX_TOTAL_FILTERS // 40)]),
        (
            "",
            f"a definition has at most {MAX_TOTAL_FILTERS} filters,"
            f" got {41 * (MAX_TOTAL_FILTERS // 40)}",
        ),
    ),
    LimitCase(
        "values of one list (50,000)",
        event(where=[in_list(MAX_LIST_VALUES)]),
        event(where=[in_list(50_000)]),
        ("event.where[0].value", f"in takes at most {MAX_LIST_VALUES} values, got 50000"),
    ),
    LimitCase(
        "values of all lists",
        event(where=[in_list(MAX_LIST_VALUES, f"p{i}") for i in range(2)]),
        event(where=[in_list(MAX_LIST_VALUES, f"p{i}") for i in range(3)]),
        (
            "",
            f"a definition has at most {MAX_TOTAL_LIST_VALUES} values in in and not_in lists,"
            f" got {3 * MAX_LIST_VALUES}",
        ),
    ),
    LimitCase(
        "string value",
        trait("x" * MAX_STRING_LENGTH),
        trait("x" * (MAX_STRING_LENGTH + 1)),
        ("trait.value", f"strings compared against are at most {MAX_STRING_LENGTH} characters"),
    ),
    LimitCase(
        "string in a list",
        event(where=[{"property": "sku", "op": "not_in", "value": ["x" * MAX_STRING_LENGTH]}]),
        event(where=[{"property": "sku", "op": "not_in", "value": ["a", "x" * 1001]}]),
        (
            "event.where[0].value[1]",
            f"strings compared against are at most {MAX_STRING_LENGTH} characters",
        ),
    ),
    LimitCase(
        "name",
        event("E" * MAX_NAME_LENGTH),
        event("E" * (MAX_NAME_LENGTH + 1)),
        ("event.name", f"must be at most {MAX_NAME_LENGTH} characters"),
    ),
    LimitCase(
        "property path",
        event(where=[{"property": "p" * MAX_NAME_LENGTH, "op": "exists"}]),
        event(where=[{"property": "p" * (MAX_NAME_LENGTH + 1), "op": "exists"}]),
        ("event.where[0].property", f"must be at most {MAX_NAME_LENGTH} characters"),
    ),
    LimitCase(
        "within_days (10^9)",
        event(window={"within_days": MAX_DAYS}),
        event(window={"within_days": 10**9}),
        ("event.window.within_days", f"must be at most {MAX_DAYS} days"),
    ),
    LimitCase(
        "between_days",
        event(window={"between_days": [MAX_DAYS - 1, MAX_DAYS]}),
        event(window={"between_days": [0, MAX_DAYS + 0.5]}),
        ("event.window.between_days", f"B must be at most {MAX_DAYS} days"),
    ),
    LimitCase(
        "count",
        event(count={"op": "gte", "value": MAX_COUNT}),
        event(count={"op": "gte", "value": MAX_COUNT + 1}),
        ("event.count.value", f"must be at most {MAX_COUNT}"),
    ),
    LimitCase(
        "whole number",
        trait(MAX_INTEGER),
        trait(MAX_INTEGER + 1),
        ("trait.value", f"whole numbers must lie between -{MAX_INTEGER} and {MAX_INTEGER}"),
    ),
    LimitCase(
        "funnel steps (200)",
        funnel(MAX_FUNNEL_STEPS),
        funnel(200),
        ("funnel.steps", f"a funnel has at most {MAX_FUNNEL_STEPS} steps, got 200"),
    ),
    LimitCase(
        "funnel steps in all",
        any_of([funnel(MAX_FUNNEL_STEPS)] * (MAX_TOTAL_FUNNEL_STEPS // MAX_FUNNEL_STEPS)),
        any_of([funnel(MAX_FUNNEL_STEPS)] * (MAX_TOTAL_FUNNEL_STEPS // MAX_FUNNEL_STEPS + 1)),
        (
            "",
            f"a definition has at most {MAX_TOTAL_FUNNEL_STEPS} funnel steps,"
            f" got {MAX_TOTAL_FUNNEL_STEPS + MAX_FUNNEL_STEPS}",
        ),
    ),
    LimitCase(
        "within_seconds",
        funnel(2, MAX_WITHIN_SECONDS),
        funnel(2, MAX_WITHIN_SECONDS + 1),
        ("funnel.within_seconds", f"must be at most {MAX_WITHIN_SECONDS} ({MAX_DAYS} days)"),
    ),
]


def computed(**body: Any) -> dict[str, Any]:
    return {"type": "sum", "event": "Order Completed", "property": "revenue", **body}


COMPUTED_CASES = [
    LimitCase(
        "window",
        computed(window={"within_days": MAX_DAYS}),
        computed(window={"within_days": MAX_DAYS + 1}),
        ("window.within_days", f"must be at most {MAX_DAYS} days"),
    ),
    LimitCase(
        "filters",
        computed(where=[gt(i) for i in range(MAX_FILTERS)]),
        computed(where=[gt(i) for i in range(MAX_FILTERS + 1)]),
        ("where", f"takes at most {MAX_FILTERS} filters, got {MAX_FILTERS + 1}"),
    ),
    LimitCase(
        "list values",
        computed(where=[in_list(MAX_LIST_VALUES)]),
        computed(where=[in_list(MAX_LIST_VALUES + 1)]),
        ("where[0].value", f"in takes at most {MAX_LIST_VALUES} values, got {MAX_LIST_VALUES + 1}"),
    ),
    LimitCase(
        "event name",
        computed(event="E" * MAX_NAME_LENGTH),
        computed(event="E" * (MAX_NAME_LENGTH + 1)),
        ("event", f"must be at most {MAX_NAME_LENGTH} characters"),
    ),
    LimitCase(
        "json depth",
        computed(),
        computed(where=nots(100, {})),
        (
            dotted("where", *["not"] * (MAX_JSON_DEPTH - 1)),
            f"nests deeper than {MAX_JSON_DEPTH} levels",
        ),
    ),
]
