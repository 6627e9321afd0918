"""Our own cases (own_cases.py) through the reference evaluator."""

from __future__ import annotations

import pytest

from services.segmentation.language import dependency_order, parse_audience
from services.segmentation.reference import ProfileData, evaluate
from tests.unit.segmentation.conformance_cases import reference_computed, resolve
from tests.unit.segmentation.own_cases import OWN_CASE_NAMES, own_case

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", OWN_CASE_NAMES)
def test_case(name: str) -> None:
    case = own_case(name)
    r = resolve(case)
    expected = case["expected"]
    assert set(r.profile_events) == set(expected["computed"])
    computed = reference_computed(case, r)
    defs = {k: parse_audience(v) for k, v in case["audiences"].items()}
    memberships: dict[str, set[str]] = {pid: set() for pid in r.profile_events}
    got = {}
    for key in dependency_order(defs):
        got[key] = sorted(
            pid
            for pid, evs in r.profile_events.items()
            if evaluate(
                defs[key],
                ProfileData(
                    events=evs,
                    traits=r.traits[pid],
                    computed=computed[pid],
                    audiences=memberships[pid],
                ),
                r.now_us,
            )
        )
        for pid in got[key]:
            memberships[pid].add(key)
    assert got == expected["members"]
