"""The account rules that need no database: member ids and the two levels of an
account-level tree."""

from __future__ import annotations

from typing import Any

import pytest

from services.segmentation.accounts import (
    ACCOUNT_MEMBER_BASE,
    account_id_of,
    account_violations,
    member_id,
)

pytestmark = pytest.mark.unit

EVENT = {"event": {"name": "Order"}}
ANY = {"account": {"match": "any", "condition": EVENT}}


def test_member_ids_never_meet_profile_ids() -> None:
    assert member_id(7) == ACCOUNT_MEMBER_BASE + 7 < 2**63
    assert account_id_of(member_id(7)) == 7
    assert account_id_of(123_456_789) is None


@pytest.mark.parametrize(
    ("raw", "account_level", "expected"),
    [
        (ANY, True, {}),
        ({"all": [{"trait": {"name": "plan", "op": "exists"}}, {"not": ANY}]}, True, {}),
        (
            {"any": [ANY, {"not": {"funnel": {"steps": [], "within_seconds": 1}}}]},
            True,
            {"d.any[1].not.funnel": "a funnel condition is about users"},
        ),
        ({"not": ANY}, False, {"d.not.account": "account conditions need an account-level"}),
        (
            {"account": {"match": "all", "condition": {"audience": {"key": "big_accounts"}}}},
            True,
            {"d.account.condition.audience.key": "audience 'big_accounts' is account-level"},
        ),
        ({"audience": {"key": "buyers"}}, False, {}),
    ],
)
def test_levels(raw: Any, account_level: bool, expected: dict[str, str]) -> None:
    found = account_violations(
        raw, "d", account_level=account_level, account_audiences={"big_accounts"}
    )
    assert {v.field for v in found} == set(expected)
    for v in found:
        assert v.description.startswith(expected[v.field])
