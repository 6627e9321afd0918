"""Context conditions: parsing and validation in the language, the rules that keep them
out of stored audiences, request contexts, and the profile service's compiled
evaluator held equal to the reference evaluator over random trees and requests."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.segmentation.definitions import context_keys, context_violations
from services.segmentation.language import (
    All,
    AudienceRef,
    ContextCondition,
    has_context,
    parse_audience,
    validate_audience,
)
from services.segmentation.reference import ProfileData, evaluate
from services.shared.request_context import build_context, compile_workspace

pytestmark = pytest.mark.unit

NOW = 1_750_000_000_000_000  # 2025-06-15T15:06:40Z, a Sunday


def ctx(attribute: str, op: str, value: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"attribute": attribute, "op": op}
    if value is not None:
        body["value"] = value
    return {"context": body}


def test_context_node_parses_and_combines() -> None:
    raw = {
        "all": [
            {"audience": {"key": "loyal_pro"}},
            ctx("device_type", "eq", "mobile"),
            ctx("country", "in", ["DE", "AT"]),
            ctx("utm_campaign", "exists"),
            {"not": ctx("custom.plan_page", "eq", True)},
        ]
    }
    node = parse_audience(raw)
    assert isinstance(node, All)
    assert node.children[0] == AudienceRef("loyal_pro")
    assert node.children[1] == ContextCondition("device_type", "eq", "mobile")
    assert node.children[2] == ContextCondition("country", "in", ("DE", "AT"))
    assert has_context(node)


@pytest.mark.parametrize(
    ("raw", "path", "reason"),
    [
        (ctx("planet", "eq", "x"), "context.attribute", "unknown context attribute 'planet'"),
        (ctx("custom.", "eq", "x"), "context.attribute", "custom attributes are named"),
        (ctx("country", "approx", "x"), "context.op", "unknown operator 'approx'"),
        (ctx("local_hour", "gte", "9"), "context.value", "gte needs a number, got string"),
        (ctx("country", "in", "DE"), "context.value", "in needs a list, got string"),
        (ctx("country", "eq"), "context.value", "is required"),
        ({"context": {"attribute": "os", "op": "eq", "value": "ios", "x": 1}}, "context.x", ""),
        (
            {"account": {"match": "any", "condition": ctx("os", "eq", "ios")}},
            "account.condition",
            "context conditions cannot go inside an account",
        ),
    ],
)
def test_bad_context_nodes(raw: Any, path: str, reason: str) -> None:
    found = validate_audience(raw)
    assert any(p == path and reason in r for p, r in found), found


def test_context_audiences_refuse_stored_conditions_and_realtime() -> None:
    raw = {"all": [ctx("os", "eq", "ios"), {"event": {"name": "Order Completed"}}]}
    found = context_violations(
        raw, "audience.definition", audiences={}, account_level=False, realtime=True
    )
    fields = {v.field for v in found}
    assert fields == {"audience.definition.all[1].event", "audience.realtime"}
    assert all("per request" in v.description for v in found)


def test_referring_to_a_context_audience_makes_one() -> None:
    stored = {"mobile": ctx("device_type", "eq", "mobile"), "buyers": {"event": {"name": "O"}}}
    assert context_keys(stored) == {"mobile"}
    mixed = {"all": [{"audience": {"key": "mobile"}}, {"trait": {"name": "plan", "op": "exists"}}]}
    (v,) = context_violations(mixed, "d", audiences=stored, account_level=False, realtime=False)
    assert v.field == "d.all[1].trait"
    assert "refers to context audience 'mobile'" in v.description
    ok = {"all": [{"audience": {"key": "mobile"}}, {"audience": {"key": "buyers"}}]}
    assert context_violations(ok, "d", audiences=stored, account_level=False, realtime=False) == []


def test_build_context_derives_local_time_and_reports_bad_fields() -> None:
    got, problems = build_context(
        {"country": "DE", "time_zone": "Europe/Berlin"}, {"plan": "pro", "n": 3}, NOW
    )
    assert problems == []
    assert got == {
        "country": "DE",
        "time_zone": "Europe/Berlin",
        "local_hour": 17,  # 15:06 UTC is 17:06 in Berlin (summer time)
        "local_weekday": 7,  # Sunday
        "custom.plan": "pro",
        "custom.n": 3,
    }
    _, problems = build_context(
        {"country": 5, "page_url": "x" * 5000, "time_zone": "Mars/Base"},
        {"nested": {"a": 1}, "": 1},
        NOW,
    )
    assert {f for f, _ in problems} == {
        "context.country",
        "context.page_url",
        "context.time_zone",
        "context.custom.nested",
        "context.custom.",
    }
    _, problems = build_context({}, [1, 2], NOW)
    assert problems == [("context.custom", "must be a JSON object")]


# --------------------------------------------------------------------------- property

ATTRS = ["country", "device_type", "page_path", "local_hour", "custom.score", "custom.flag"]
STRINGS = ["DE", "AT", "mobile", "/pricing", "", "de"]
SCALARS = st.one_of(
    st.sampled_from(STRINGS),
    st.integers(-3, 30),
    st.floats(-3, 30, allow_nan=False),
    st.booleans(),
)
OPS = [
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
]
AUDIENCES = ["a", "b", "c"]


@st.composite
def condition(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPS))
    attribute = draw(st.sampled_from(ATTRS))
    if op in ("exists", "not_exists"):
        return ctx(attribute, op)
    if op in ("gt", "gte", "lt", "lte"):
        value: Any = draw(st.integers(-3, 30) | st.floats(-3, 30, allow_nan=False))
    elif op in ("in", "not_in"):
        value = draw(st.lists(SCALARS, min_size=1, max_size=4))
    elif op == "starts_with":
        value = draw(st.sampled_from(STRINGS))
    else:
        value = draw(SCALARS)
    return ctx(attribute, op, value)


leaves = st.one_of(condition(), st.sampled_from(AUDIENCES).map(lambda k: {"audience": {"key": k}}))
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(kids, min_size=1, max_size=3).map(lambda c: {"any": c}),
        kids.map(lambda c: {"not": c}),
    ),
    max_leaves=8,
)
requests = st.dictionaries(
    st.sampled_from(ATTRS), st.one_of(SCALARS, st.sampled_from(["/pricing/plans", "DE-x"]))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, request=requests, stored=st.sets(st.sampled_from(AUDIENCES)))
def test_compiled_evaluation_equals_reference(
    tree: dict[str, Any], request: dict[str, Any], stored: set[str]
) -> None:
    compiled = compile_workspace("v", [("x", tree)])
    expected = evaluate(parse_audience(tree), ProfileData(audiences=stored, context=request), NOW)
    assert compiled.evaluate(request, sorted(stored)) == (["x"] if expected else [])


def test_context_audiences_may_build_on_each_other() -> None:
    compiled = compile_workspace(
        "v",
        [
            ("mobile", ctx("device_type", "eq", "mobile")),
            (
                "mobile_pro",
                {"all": [{"audience": {"key": "mobile"}}, {"audience": {"key": "pro"}}]},
            ),
        ],
    )
    assert compiled.evaluate({"device_type": "mobile"}, ["pro"]) == ["mobile", "mobile_pro"]
    assert compiled.evaluate({"device_type": "mobile"}, []) == ["mobile"]
    assert compiled.evaluate({}, ["pro"]) == []
