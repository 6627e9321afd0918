"""All conformance cases through the reference evaluator: exact members and values."""

from __future__ import annotations

import pytest

from services.segmentation.language import dependency_order, parse_audience
from services.segmentation.reference import ProfileData, evaluate
from tests.unit.segmentation.conformance_cases import (
    case_by_name,
    case_names,
    reference_computed,
    resolve,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", case_names())
def test_case(name: str) -> None:
    case = case_by_name(name)
    r = resolve(case)
    expected = case["expected"]
    assert set(r.profile_events) == set(expected["computed"]), "universe differs"

    computed = reference_computed(case, r)

    defs = {k: parse_audience(v) for k, v in case["audiences"].items()}
    memberships: dict[str, set[str]] = {pid: set() for pid in r.profile_events}
    wrong = {}
    for key in dependency_order(defs):
        members = set()
        for pid, evs in r.profile_events.items():
            p = ProfileData(
                events=evs, traits=r.traits[pid], computed=computed[pid], audiences=memberships[pid]
            )
            if evaluate(defs[key], p, r.now_us):
                members.add(pid)
        for pid in members:
            memberships[pid].add(key)
        want = set(expected["members"][key])
        if members != want:
            wrong[key] = (sorted(members - want)[:5], sorted(want - members)[:5])
    assert not wrong, f"audiences differ (extra, missing): {wrong}"
