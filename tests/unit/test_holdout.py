"""Holdout assignment: stable across processes and close to its share."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.shared.holdout import bucket, in_holdout

pytestmark = pytest.mark.unit


def test_share_holds_within_one_point_on_100k_profiles() -> None:
    for share in (0.05, 0.1, 0.3):
        held = sum(in_holdout("loyal_pro", pid, share) for pid in range(100_000))
        assert abs(held / 100_000 - share) < 0.01, (share, held)


def test_audiences_split_independently() -> None:
    a = {pid for pid in range(20_000) if in_holdout("a", pid, 0.5)}
    b = {pid for pid in range(20_000) if in_holdout("b", pid, 0.5)}
    # Independent halves overlap on about a quarter, not all or nothing.
    assert abs(len(a & b) / 20_000 - 0.25) < 0.02


def test_assignment_is_the_same_in_another_process() -> None:
    ids = list(range(0, 5_000, 7))
    here = [round(bucket("vip", pid), 12) for pid in ids]
    code = (
        "import json; from services.shared.holdout import bucket; "
        f"print(json.dumps([round(bucket('vip', pid), 12) for pid in {ids!r}]))"
    )
    # A fresh interpreter with another hash seed: nothing may depend on hash().
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": "."},
    )
    assert json.loads(other.stdout) == here


def test_zero_share_holds_nobody_out() -> None:
    assert not any(in_holdout("a", pid, 0.0) for pid in range(1000))
