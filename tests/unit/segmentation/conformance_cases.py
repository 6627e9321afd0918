"""The conformance cases resolved to profiles: the public cases
(tests/data/conformance/audiences.jsonl, a copy of the shared file) and our own
(own_cases.py), read by every test that runs them (reference, SQL, real services).

Applies the identity convention of the conformance README: a profile is the user_id,
or ``anon:<anonymous_id>`` for an anonymous id never linked to a user; an identify or
track carrying both ids links the anonymous id's whole history to the user; a repeated
message_id counts once (the first copy received wins); traits per key come from the
identify with the latest timestamp, received order breaking ties, null removing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from services.segmentation.language import parse_computed_trait
from services.segmentation.reference import compute_trait
from tests.unit.segmentation.own_cases import CASES as OWN_CASES

# A copy lives in the repository so the tests cannot vanish in a clone without it;
# AUDIENCES_CONFORMANCE=/path/to/audiences.jsonl runs a newer file instead.
_DEFAULT = Path(__file__).resolve().parents[2] / "data" / "conformance" / "audiences.jsonl"
CASES_PATH = Path(os.environ.get("AUDIENCES_CONFORMANCE", str(_DEFAULT)))

# Calls whose user_id + anonymous_id pair links the two (conformance README).
LINKING_TYPES = ("identify", "track")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(ts: str) -> int:
    """ISO-8601 UTC to integer microseconds, exactly (no float on the way)."""
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (dt - _EPOCH) // (datetime.resolution)


@cache
def load_cases() -> tuple[dict[str, Any], ...]:
    """The public cases then our own. A missing or empty file fails collection: a skip
    here would let every conformance test pass by running nothing."""
    if not CASES_PATH.is_file():
        raise FileNotFoundError(f"conformance cases not found at {CASES_PATH}")
    with CASES_PATH.open() as f:
        public = tuple(json.loads(line) for line in f if line.strip())
    if not public:
        raise ValueError(f"no conformance cases in {CASES_PATH}")
    cases = public + tuple(OWN_CASES)
    names = [c["name"] for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"conformance case names repeat: {sorted(names)}")
    return cases


def case_names() -> list[str]:
    """Every case's name (the test parameter)."""
    return [c["name"] for c in load_cases()]


def case_by_name(name: str) -> dict[str, Any]:
    return next(c for c in load_cases() if c["name"] == name)


@dataclass
class Resolved:
    now_us: int
    # Accepted events in received order (duplicates dropped); "seq" is received order.
    events: list[dict[str, Any]] = field(default_factory=list)
    # anonymous id -> the user id it is linked to
    anon_owner: dict[str, str] = field(default_factory=dict)
    # profile id -> events (dicts: type, name, timestamp_us, seq, properties)
    profile_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # profile id -> current traits
    traits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def profile_of(self, ev: dict[str, Any]) -> str:
        if ev.get("user_id"):
            return ev["user_id"]
        anon = ev["anonymous_id"]
        return self.anon_owner.get(anon, f"anon:{anon}")


def resolve(case: dict[str, Any]) -> Resolved:
    r = Resolved(now_us=to_us(case["now"]))
    seen: set[str] = set()
    for raw in case["events"]:
        if raw["message_id"] in seen:
            continue
        seen.add(raw["message_id"])
        ev = dict(raw)
        ev["seq"] = len(r.events) + 1
        ev["timestamp_us"] = to_us(raw["timestamp"])
        r.events.append(ev)
        if ev["type"] in LINKING_TYPES and ev.get("user_id") and ev.get("anonymous_id"):
            r.anon_owner.setdefault(ev["anonymous_id"], ev["user_id"])
    latest: dict[str, dict[str, tuple[tuple[int, int], Any]]] = {}
    for ev in r.events:
        pid = r.profile_of(ev)
        r.profile_events.setdefault(pid, []).append(
            {
                "type": ev["type"],
                "name": ev.get("event") if ev["type"] == "track" else ev.get("name"),
                "timestamp_us": ev["timestamp_us"],
                "seq": ev["seq"],
                "properties": ev.get("properties"),
            }
        )
        if ev["type"] == "identify":
            slot = latest.setdefault(pid, {})
            order = (ev["timestamp_us"], ev["seq"])
            for k, v in (ev.get("traits") or {}).items():
                if k not in slot or slot[k][0] < order:
                    slot[k] = (order, v)
    for pid in r.profile_events:
        r.traits[pid] = {k: v for k, (_, v) in latest.get(pid, {}).items() if v is not None}
    return r


def close(a: Any, b: Any) -> bool:
    """Conformance comparison: numbers within 1e-9 (relative or absolute), the rest exact."""
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, num) and isinstance(b, num):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def reference_computed(case: dict[str, Any], r: Resolved) -> dict[str, dict[str, Any]]:
    """Every profile's computed-trait values by the reference evaluator (filters read the
    profile's traits), asserted equal to the case's expected values."""
    defs = {k: parse_computed_trait(v) for k, v in case["computed_traits"].items()}
    computed = {
        pid: {k: compute_trait(d, evs, r.now_us, r.traits[pid]) for k, d in defs.items()}
        for pid, evs in r.profile_events.items()
    }
    bad = [
        (pid, k, computed[pid][k], v)
        for pid, vals in case["expected"]["computed"].items()
        for k, v in vals.items()
        if not close(computed[pid][k], v)
    ]
    assert not bad, f"{len(bad)} computed values differ, e.g. {bad[:5]}"
    return computed
