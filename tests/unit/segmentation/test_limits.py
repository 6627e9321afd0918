"""The limits of definitions (tests/unit/segmentation/limit_cases.py): each one at its
limit is valid, one step past it is refused at the exact path; deep input is refused
without recursion; many violations are capped."""

from __future__ import annotations

import pytest

from services.segmentation.definitions import (
    MAX_DEFINITION_BYTES,
    audience_refs_raw,
    decode_json,
)
from services.segmentation.language import (
    MAX_REPORTED_VIOLATIONS,
    DefinitionError,
    audience_refs,
    parse_audience,
    parse_computed_trait,
    validate_audience,
    validate_computed_trait,
)
from services.shared.errors import FieldViolation
from tests.unit.segmentation.conformance_cases import load_cases
from tests.unit.segmentation.limit_cases import AUDIENCE_CASES, COMPUTED_CASES, LimitCase, nots
from tests.unit.segmentation.own_cases import CASES as OWN_CASES

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("case", AUDIENCE_CASES, ids=lambda c: c.name)
def test_audience_limit(case: LimitCase) -> None:
    assert validate_audience(case.at_limit) == []
    parse_audience(case.at_limit)
    assert validate_audience(case.over_limit) == [case.violation]
    with pytest.raises(DefinitionError) as raised:
        parse_audience(case.over_limit)
    assert raised.value.violations == [case.violation]


@pytest.mark.parametrize("case", COMPUTED_CASES, ids=lambda c: c.name)
def test_computed_trait_limit(case: LimitCase) -> None:
    assert validate_computed_trait(case.at_limit) == []
    parse_computed_trait(case.at_limit)
    assert validate_computed_trait(case.over_limit) == [case.violation]


def test_nesting_far_past_the_stack_is_refused_without_recursion() -> None:
    # 100,000 levels would overflow any recursive walk (Python's limit is ~1,000).
    deep = nots(100_000, {"event": {"name": "E"}})
    (violation,) = validate_audience(deep)
    assert violation[1] == "nests deeper than 64 levels"
    assert validate_computed_trait({"type": "sum", "event": "E", "where": deep})[0][1] == (
        "nests deeper than 64 levels"
    )
    # Reference walks run over stored definitions that may predate the limits.
    assert audience_refs(nots(100_000, {"audience": {"key": "a"}})) == {"a"}
    assert audience_refs_raw(nots(100_000, {"audience": {"key": "a"}})) == {"a"}


def test_json_text_is_bounded_in_size_and_depth() -> None:
    found: list[FieldViolation] = []
    assert decode_json(b"[" * 5_000 + b"]" * 5_000, "definition", found) is None
    assert decode_json(b" " * (MAX_DEFINITION_BYTES + 1), "definition", found) is None
    assert found == [
        FieldViolation("definition", "nests too deeply"),
        FieldViolation("definition", f"must be at most {MAX_DEFINITION_BYTES} bytes of JSON"),
    ]


def test_many_violations_are_capped_with_a_count_of_the_rest() -> None:
    found = validate_audience({"any": [{"bogus": {}} for _ in range(100)]})
    assert len(found) == MAX_REPORTED_VIOLATIONS + 1
    assert found[0] == ("any[0].bogus", "unknown node type")
    assert found[-1] == ("", f"and {100 - MAX_REPORTED_VIOLATIONS} more violations")


def test_no_conformance_or_own_case_is_refused() -> None:
    cases = [*load_cases(), *OWN_CASES]
    assert cases
    for case in cases:
        for key, definition in case.get("audiences", {}).items():
            assert validate_audience(definition) == [], (case["name"], key)
        for key, definition in case.get("computed_traits", {}).items():
            assert validate_computed_trait(definition) == [], (case["name"], key)
