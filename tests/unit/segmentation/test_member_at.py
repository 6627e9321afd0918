"""GetMembershipHistory's `member_at` over a merged person's records (pure logic)."""

from __future__ import annotations

import pytest

from services.segmentation.model import ENTERED, EXITED, Change
from services.segmentation.service import member_at_instant

pytestmark = pytest.mark.unit

SURVIVOR, ABSORBED = 1, 2
MERGED_AT = {ABSORBED: 50}


def _change(seq: int, profile_id: int, kind: str, at_us: int) -> Change:
    return Change(seq, 7, "", profile_id, kind, at_us, 1)


def test_a_profile_merged_in_while_a_member_keeps_the_person_in() -> None:
    # The survivor left on its own before the merge; the absorbed profile stayed in.
    changes = [
        _change(1, SURVIVOR, ENTERED, 10),
        _change(2, ABSORBED, ENTERED, 20),
        _change(3, SURVIVOR, EXITED, 30),
    ]
    assert member_at_instant(changes, SURVIVOR, MERGED_AT, 25) is True
    assert member_at_instant(changes, SURVIVOR, MERGED_AT, 40) is True
    assert member_at_instant(changes, SURVIVOR, MERGED_AT, 5) is False


def test_an_exit_of_the_survivor_after_the_merge_is_the_whole_person_leaving() -> None:
    changes = [
        _change(1, ABSORBED, ENTERED, 20),
        _change(2, SURVIVOR, EXITED, 60),
    ]
    assert member_at_instant(changes, SURVIVOR, MERGED_AT, 59) is True
    assert member_at_instant(changes, SURVIVOR, MERGED_AT, 60) is False
    # Entering again later is the person entering again.
    again = [*changes, _change(3, SURVIVOR, ENTERED, 70)]
    assert member_at_instant(again, SURVIVOR, MERGED_AT, 80) is True


def test_records_order_by_instant_then_seq() -> None:
    # A backtest recompute writes records dated in the past with later seqs.
    changes = [
        _change(1, SURVIVOR, ENTERED, 100),
        _change(2, SURVIVOR, EXITED, 40),
    ]
    assert member_at_instant(changes, SURVIVOR, {}, 50) is False
    assert member_at_instant(changes, SURVIVOR, {}, 100) is True
