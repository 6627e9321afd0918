"""Validation rules of the audience language, each with its asserted path and reason."""

from __future__ import annotations

from typing import Any

import pytest

from services.segmentation.language import (
    All,
    Between,
    Count,
    DefinitionError,
    Event,
    Filter,
    Funnel,
    StepRef,
    TraitRef,
    Within,
    audience_refs,
    computed_trait_refs,
    dependency_layers,
    dependency_order,
    find_cycle,
    parse_audience,
    parse_computed_trait,
    trait_row_keys,
    validate_audience,
    validate_computed_trait,
)

pytestmark = pytest.mark.unit


def ev(**body: Any) -> dict[str, Any]:
    return {"event": {"name": "Order Completed", **body}}


def test_parses_event_defaults() -> None:
    node = parse_audience(
        {"all": [ev(), ev(count={"op": "eq", "value": 0}, window={"within_days": 7})]}
    )
    assert isinstance(node, All)
    first, second = node.children
    assert first == Event("Order Completed")
    assert first.count == Count("gte", 1)
    assert second.count == Count("eq", 0)
    assert second.window == Within(7)


def test_parses_funnel_refs() -> None:
    node = parse_audience(
        {
            "funnel": {
                "steps": [
                    {"name": "Viewed"},
                    {
                        "name": "Bought",
                        "where": [
                            {"property": "sku", "op": "eq", "ref": {"step": 0, "property": "sku"}}
                        ],
                    },
                    {
                        "name": "Shipped",
                        "where": [{"property": "country", "op": "eq", "ref": {"trait": "country"}}],
                    },
                ],
                "within_seconds": 3600,
                "window": {"between_days": [1, 30]},
                "completed": False,
            }
        }
    )
    assert isinstance(node, Funnel)
    assert node.steps[1].where == (Filter("sku", "eq", None, StepRef(0, "sku")),)
    assert node.steps[2].where[0].ref == TraitRef("country")
    assert node.window == Between(1, 30)
    assert node.completed is False


@pytest.mark.parametrize(
    ("definition", "violation"),
    [
        ({"bogus": {}}, ("bogus", "unknown node type")),
        (
            {"all": [ev(), {"event": {"name": "X", "count": {"op": "around", "value": 1}}}]},
            ("all[1].event.count.op", "unknown operator 'around'"),
        ),
        (
            {"event": {"name": "X", "count": {"op": "gte", "value": -1}}},
            ("event.count.value", "must be a non-negative integer"),
        ),
        (
            {"event": {"name": "X", "count": {"op": "gte", "value": "2"}}},
            ("event.count.value", "must be a non-negative integer"),
        ),
        ({"event": {"name": "X", "count": {"op": "gte"}}}, ("event.count.value", "is required")),
        ({"event": {}}, ("event.name", "is required")),
        ({"event": {"name": ""}}, ("event.name", "must be a non-empty string")),
        (
            {"event": {"name": "X", "type": "alias"}},
            ("event.type", "unknown event type 'alias'; expected track, page or screen"),
        ),
        ({"event": {"name": "X", "cnt": 1}}, ("event.cnt", "unknown field")),
        (
            ev(where=[{"property": "price", "op": "gt", "value": "12"}]),
            ("event.where[0].value", "gt needs a number, got string"),
        ),
        (
            ev(where=[{"property": "price", "op": "lte", "value": True}]),
            ("event.where[0].value", "lte needs a number, got boolean"),
        ),
        (
            ev(where=[{"property": "c", "op": "in", "value": "books"}]),
            ("event.where[0].value", "in needs a list, got string"),
        ),
        (
            ev(where=[{"property": "c", "op": "not_in", "value": [{"a": 1}]}]),
            ("event.where[0].value[0]", "must be a string, number or boolean, got object"),
        ),
        (
            ev(where=[{"property": "c", "op": "starts_with", "value": 1}]),
            ("event.where[0].value", "starts_with needs a string, got number"),
        ),
        (
            ev(where=[{"property": "c", "op": "eq", "value": None}]),
            ("event.where[0].value", "eq needs a string, number or boolean, got null"),
        ),
        (ev(where=[{"property": "c", "op": "eq"}]), ("event.where[0].value", "is required")),
        (
            ev(where=[{"property": "c", "op": "exists", "value": 3}]),
            ("event.where[0].value", "exists takes no value"),
        ),
        (ev(where=[{"op": "exists"}]), ("event.where[0].property", "is required")),
        (ev(where=[{"property": "c"}]), ("event.where[0].op", "is required")),
        (
            ev(where=[{"property": "c", "op": "like", "value": "x"}]),
            ("event.where[0].op", "unknown operator 'like'"),
        ),
        (ev(where={"property": "c"}), ("event.where", "must be a list, got object")),
        (
            ev(where=[{"property": "c", "op": "eq", "ref": {"step": 0, "property": "c"}}]),
            ("event.where[0].ref.step", "step references are only allowed in funnel steps"),
        ),
        (
            ev(where=[{"property": "c", "op": "in", "ref": {"trait": "t"}}]),
            ("event.where[0].op", "in cannot take a ref"),
        ),
        (
            ev(where=[{"property": "c", "op": "eq", "value": 1, "ref": {"trait": "t"}}]),
            ("event.where[0].ref", "give either value or ref, not both"),
        ),
        (
            ev(where=[{"property": "c", "op": "eq", "ref": {"nope": 1}}]),
            ("event.where[0].ref", "must have trait or step"),
        ),
        (ev(window={"within_days": 0}), ("event.window.within_days", "must be greater than 0")),
        (ev(window={"within_days": -3}), ("event.window.within_days", "must be greater than 0")),
        (ev(window={"within_days": "7"}), ("event.window.within_days", "must be a number")),
        (
            ev(window={"between_days": [30, 7]}),
            ("event.window.between_days", "A must be less than B"),
        ),
        (
            ev(window={"between_days": [7, 7]}),
            ("event.window.between_days", "A must be less than B"),
        ),
        (
            ev(window={"between_days": [7]}),
            ("event.window.between_days", "must be a list of two numbers [A, B]"),
        ),
        (
            ev(window={"between_days": [-1, 7]}),
            ("event.window.between_days", "A must not be negative"),
        ),
        (
            ev(window={"days": 7}),
            ("event.window.days", "unknown window; expected within_days or between_days"),
        ),
        (
            ev(window={"within_days": 1, "between_days": [1, 2]}),
            ("event.window", "must have exactly one of within_days, between_days"),
        ),
        (
            {"trait": {"name": "age", "op": "gt", "value": "30"}},
            ("trait.value", "gt needs a number, got string"),
        ),
        ({"trait": {"name": "plan", "op": "in"}}, ("trait.value", "is required")),
        ({"trait": {"op": "exists"}}, ("trait.name", "is required")),
        (
            {"computed": {"key": "ltv", "op": "between", "value": 1}},
            ("computed.op", "unknown operator 'between'"),
        ),
        ({"audience": {}}, ("audience.key", "is required")),
        ({"not": {"all": []}}, ("not.all", "must not be empty")),
        ({"any": {"event": {"name": "X"}}}, ("any", "must be a list, got object")),
        (
            {"event": {"name": "X"}, "trait": {}},
            ("", "a node must have exactly one key, got ['event', 'trait']"),
        ),
        ("event", ("", "must be an object, got string")),
        (
            {"prediction": {"key": "churn", "percentile": {"gte": 120}}},
            ("prediction.percentile.gte", "must be between 0 and 100"),
        ),
        (
            {"prediction": {"key": "churn", "probability": {"gte": "x"}}},
            ("prediction.probability.gte", "gte needs a number, got string"),
        ),
        (
            {"prediction": {"key": "churn", "probability": {"near": 0.5}}},
            ("prediction.probability.near", "unknown operator 'near'"),
        ),
        (
            {"prediction": {"key": "churn"}},
            ("prediction", "must have exactly one of percentile, probability"),
        ),
        (
            {"account": {"match": "most", "condition": {"trait": {"name": "a", "op": "exists"}}}},
            ("account.match", "unknown quantifier 'most'; expected any, all or none"),
        ),
        ({"account": {"match": "any"}}, ("account.condition", "is required")),
    ],
)
def test_violation(definition: Any, violation: tuple[str, str]) -> None:
    violations = validate_audience(definition)
    assert violation in violations, violations
    with pytest.raises(DefinitionError) as exc:
        parse_audience(definition)
    assert violation in exc.value.violations


def funnel(steps: list[Any], **kw: Any) -> dict[str, Any]:
    return {"funnel": {"steps": steps, "within_seconds": 60, **kw}}


@pytest.mark.parametrize(
    ("definition", "violation"),
    [
        (
            funnel(
                [
                    {"name": "A"},
                    {
                        "name": "B",
                        "where": [
                            {"property": "p", "op": "eq", "ref": {"step": 1, "property": "p"}}
                        ],
                    },
                ]
            ),
            ("funnel.steps[1].where[0].ref.step", "must refer to an earlier step (0..0), got 1"),
        ),
        (
            funnel(
                [
                    {"name": "A"},
                    {
                        "name": "B",
                        "where": [
                            {"property": "p", "op": "eq", "ref": {"step": 2, "property": "p"}}
                        ],
                    },
                ]
            ),
            ("funnel.steps[1].where[0].ref.step", "must refer to an earlier step (0..0), got 2"),
        ),
        (
            funnel(
                [
                    {
                        "name": "A",
                        "where": [
                            {"property": "p", "op": "eq", "ref": {"step": 0, "property": "p"}}
                        ],
                    },
                    {"name": "B"},
                ]
            ),
            ("funnel.steps[0].where[0].ref.step", "must refer to an earlier step (0..-1), got 0"),
        ),
        (
            funnel(
                [
                    {"name": "A"},
                    {
                        "name": "B",
                        "where": [
                            {"property": "p", "op": "eq", "ref": {"step": "0", "property": "p"}}
                        ],
                    },
                ]
            ),
            ("funnel.steps[1].where[0].ref.step", "must be an integer"),
        ),
        (funnel([{"name": "A"}]), ("funnel.steps", "a funnel needs at least 2 steps")),
        (
            funnel([{"name": "A"}, {"name": "B", "count": {"op": "gte", "value": 1}}]),
            ("funnel.steps[1].count", "not allowed in a funnel step"),
        ),
        (
            funnel([{"name": "A"}, {"name": "B", "window": {"within_days": 1}}]),
            ("funnel.steps[1].window", "not allowed in a funnel step"),
        ),
        (funnel([{"name": "A"}, {}]), ("funnel.steps[1].name", "is required")),
        (
            funnel([{"name": "A"}, {"name": "B"}], within_seconds=0),
            ("funnel.within_seconds", "must be a number greater than 0"),
        ),
        (
            {"funnel": {"steps": [{"name": "A"}, {"name": "B"}]}},
            ("funnel.within_seconds", "is required"),
        ),
        ({"funnel": {"within_seconds": 5}}, ("funnel.steps", "is required")),
        (
            funnel([{"name": "A"}, {"name": "B"}], completed="yes"),
            ("funnel.completed", "must be true or false"),
        ),
        (
            funnel([{"name": "A"}, {"name": "B"}], window={"between_days": [5, 1]}),
            ("funnel.window.between_days", "A must be less than B"),
        ),
    ],
)
def test_funnel_violation(definition: Any, violation: tuple[str, str]) -> None:
    assert violation in validate_audience(definition)


def test_all_violations_reported_at_once() -> None:
    v = validate_audience(
        {
            "all": [
                {"event": {"name": "X", "count": {"op": "nope", "value": 1}}},
                {"trait": {"name": "a", "op": "gt", "value": "s"}},
            ]
        }
    )
    assert v == [
        ("all[0].event.count.op", "unknown operator 'nope'"),
        ("all[1].trait.value", "gt needs a number, got string"),
    ]


def test_valid_definitions_have_no_violations() -> None:
    for d in [
        ev(),
        {"not": {"trait": {"name": "email", "op": "not_exists"}}},
        {"computed": {"key": "ltv", "op": "gte", "value": 10.5}},
        {"prediction": {"key": "churn", "percentile": {"gte": 90}}},
        {"prediction": {"key": "churn", "probability": {"gt": 0.2, "lte": 0.9}}},
        {"account": {"match": "all", "condition": ev()}},
        {
            "event": {
                "name": "Home",
                "type": "page",
                "where": [{"property": "a.b", "op": "contains", "value": "x"}],
            }
        },
    ]:
        assert validate_audience(d) == [], d


@pytest.mark.parametrize(
    ("definition", "violation"),
    [
        (
            {"type": "median", "event": "E", "property": "p"},
            ("type", "unknown computed trait type 'median'"),
        ),
        ({"event": "E"}, ("type", "is required")),
        ({"type": "sum", "property": "p"}, ("event", "is required")),
        ({"type": "sum", "event": "E"}, ("property", "is required")),
        (
            {"type": "event_count", "event": "E", "property": "p"},
            ("property", "event_count takes no property"),
        ),
        (
            {"type": "event_count", "event": "E", "window": {"within_days": 0}},
            ("window.within_days", "must be greater than 0"),
        ),
        (
            {
                "type": "last",
                "event": "E",
                "property": "p",
                "where": [{"property": "x", "op": "gte", "value": "1"}],
            },
            ("where[0].value", "gte needs a number, got string"),
        ),
        (
            {
                "type": "last",
                "event": "E",
                "property": "p",
                "where": [{"property": "x", "op": "eq", "ref": {"step": 0, "property": "y"}}],
            },
            ("where[0].ref.step", "step references are only allowed in funnel steps"),
        ),
        (
            {
                "type": "last",
                "event": "E",
                "property": "p",
                "where": [{"property": "x", "op": "eq", "ref": {"computed": "c"}}],
            },
            ("where[0].ref.computed", "refs to computed traits are not supported"),
        ),
        ({"type": "last", "event": "E", "property": "p", "extra": 1}, ("extra", "unknown field")),
    ],
)
def test_computed_violation(definition: Any, violation: tuple[str, str]) -> None:
    assert violation in validate_computed_trait(definition)
    with pytest.raises(DefinitionError):
        parse_computed_trait(definition)


def test_computed_trait_filters_may_compare_with_traits() -> None:
    d = parse_computed_trait(
        {
            "type": "event_count",
            "event": "Product Viewed",
            "where": [{"property": "category", "op": "eq", "ref": {"trait": "prefs.category"}}],
        }
    )
    assert d.where == (Filter("category", "eq", None, TraitRef("prefs.category")),)
    assert computed_trait_refs(d) == {"prefs.category"}


def test_trait_row_keys_are_the_literal_name_and_its_first_part() -> None:
    assert trait_row_keys("plan") == ("plan",)
    assert trait_row_keys("billing.tier") == ("billing.tier", "billing")
    assert trait_row_keys("a.b.c") == ("a.b.c", "a")


def test_audience_refs_and_cycles() -> None:
    defs = {
        "a": {"all": [{"audience": {"key": "b"}}, ev()]},
        "b": {"not": {"audience": {"key": "c"}}},
        "c": {"any": [{"audience": {"key": "a"}}]},
        "d": {"audience": {"key": "a"}},
    }
    assert audience_refs(defs["a"]) == {"b"}
    assert audience_refs(parse_audience(defs["d"])) == {"a"}
    assert find_cycle(defs) == "a -> b -> c -> a"
    assert find_cycle({"a": {"audience": {"key": "a"}}}) == "a -> a"
    with pytest.raises(DefinitionError) as exc:
        dependency_order(defs)
    assert exc.value.violations == [("", "audience reference cycle: a -> b -> c -> a")]
    acyclic = {k: v for k, v in defs.items() if k != "c"}
    assert find_cycle(acyclic) is None  # the reference to the missing "c" is ignored
    order = dependency_order(acyclic)
    assert order.index("b") < order.index("a") < order.index("d")


def test_dependency_layers_put_each_audience_after_what_it_references() -> None:
    defs = {
        "a": {"all": [{"audience": {"key": "b"}}, {"audience": {"key": "c"}}]},
        "b": {"audience": {"key": "c"}},
        "c": ev(),
        "d": {"audience": {"key": "missing"}},
        "e": {"not": {"audience": {"key": "b"}}},
    }
    layers = dependency_layers(defs)
    depth = {k: i for i, layer in enumerate(layers) for k in layer}
    assert sorted(depth) == sorted(defs)
    for key, raw in defs.items():
        for ref in audience_refs(raw):
            if ref in defs:
                assert depth[ref] < depth[key], (key, ref, layers)
    # Nothing waits longer than its references require: a missing key is no dependency.
    assert layers[0] == ["c", "d"]
    assert len(layers) == 3
    cyclic = {"x": {"audience": {"key": "y"}}, "y": {"audience": {"key": "x"}}}
    with pytest.raises(DefinitionError):
        dependency_layers(cyclic)
