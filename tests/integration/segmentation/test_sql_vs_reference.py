"""Property: the SQL evaluator (on SQLite) and the reference evaluator agree on random
small histories and random definitions, including merged profiles, timestamp ties,
events after now, JSON type edge cases (1 vs 1.0 vs "1" vs true), funnel refs, dotted
trait names (nested values, a literal dotted key, arrays and scalars in the way) and
computed traits whose filters compare with a trait."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.segmentation.language import FILTER_OPS, parse_audience, parse_computed_trait
from services.segmentation.reference import ProfileData, compute_trait, evaluate
from services.segmentation.sql import compile_audience, compile_audiences, compile_computed_trait
from services.shared.db.tables import events, metadata, profile_traits, profiles
from tests.unit.segmentation.conformance_cases import close

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000_000
HOUR = 3_600_000_000
_ws_counter = itertools.count()

PROP_VALUES = [
    1,
    1.0,
    2,
    2.5,
    -1,
    "1",
    "a",
    "ab",
    "ba",
    "",
    True,
    False,
    None,
    [1, "a"],
    ["b", 2.0],
    {"r": "a"},
]
EQ_VALUES = [1, 1.0, 2, "1", "a", "ab", True, False]
NUM_VALUES = [0, 1, 1.5, 2, -1]
PATHS = ["p", "q.r", "nope"]
OPS = sorted(FILTER_OPS)
# Trait rows are top-level keys; "n" holds nested values and "n.x" is a literal key
# spelled like the path into them.
TRAIT_KEYS = ("t1", "t2", "n", "n.x")
TRAIT_NAMES = ["t1", "t2", "n.x", "n.x", "n.y.z", "n"]
SCALAR_TRAITS = [1, "a", "ab", True, None, 2.5, "1", [1, "a"]]
trait_values = st.sampled_from(SCALAR_TRAITS)
nested_traits = st.one_of(
    st.builds(lambda x: {"x": x}, trait_values),
    st.builds(lambda x, z: {"x": x, "y": {"z": z}}, trait_values, trait_values),
    st.builds(lambda z: {"y": z}, trait_values),  # n.y.z: "y" is not an object
    st.builds(lambda x: [{"x": x}], trait_values),  # arrays are never indexed
    trait_values,
)
nested_with_x = st.one_of(
    st.builds(lambda x, z: {"x": x, "y": {"z": z}}, trait_values, trait_values), nested_traits
)


def literal_for(op: str) -> st.SearchStrategy[Any]:
    if op in ("gt", "gte", "lt", "lte"):
        return st.sampled_from(NUM_VALUES)
    if op in ("in", "not_in"):
        return st.lists(st.sampled_from(EQ_VALUES), max_size=3)
    if op == "starts_with":
        return st.sampled_from(["a", "", "b", "1"])
    return st.sampled_from(EQ_VALUES)


REF_OPS = ["eq", "neq", "gt", "gte", "lt", "lte", "contains", "starts_with"]
trait_ref_filters = st.builds(
    lambda path, op, name: {"property": path, "op": op, "ref": {"trait": name}},
    st.sampled_from(PATHS),
    st.sampled_from(REF_OPS),
    st.sampled_from(TRAIT_NAMES),
)


@st.composite
def filters(draw: st.DrawFn, step: int | None = None) -> dict[str, Any]:
    path = draw(st.sampled_from(PATHS))
    if draw(st.integers(0, 3)) == 0:
        ref: dict[str, Any] = {"trait": draw(st.sampled_from(TRAIT_NAMES))}
        if step:
            ref = draw(
                st.sampled_from([ref, {"step": 0, "property": draw(st.sampled_from(PATHS))}])
            )
        return {"property": path, "op": draw(st.sampled_from(REF_OPS)), "ref": ref}
    op = draw(st.sampled_from(OPS))
    f = {"property": path, "op": op}
    if op not in ("exists", "not_exists"):
        f["value"] = draw(literal_for(op))
    return f


windows = st.one_of(
    st.none(),
    st.builds(lambda d: {"within_days": d}, st.sampled_from([1, 2, 5, 0.5])),
    st.builds(
        lambda a, w: {"between_days": [a, a + w]},
        st.sampled_from([0, 1, 2]),
        st.sampled_from([1, 3]),
    ),
)


@st.composite
def event_node(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"name": draw(st.sampled_from(["A", "B"]))}
    if draw(st.booleans()):
        body["where"] = draw(st.lists(filters(), max_size=2))
    if draw(st.booleans()):
        body["count"] = {
            "op": draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"])),
            "value": draw(st.integers(0, 3)),
        }
    w = draw(windows)
    if w:
        body["window"] = w
    if draw(st.integers(0, 5)) == 0:
        body["type"] = "page"
    return {"event": body}


@st.composite
def trait_node(draw: st.DrawFn, names: list[str] = TRAIT_NAMES) -> dict[str, Any]:
    op = draw(st.sampled_from(OPS))
    body = {"name": draw(st.sampled_from(names)), "op": op}
    if op not in ("exists", "not_exists"):
        body["value"] = draw(literal_for(op))
    return {"trait": body}


@st.composite
def funnel_node(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 3))
    steps = []
    for i in range(n):
        s: dict[str, Any] = {"name": draw(st.sampled_from(["A", "B"]))}
        if draw(st.booleans()):
            s["where"] = draw(st.lists(filters(step=i), max_size=2))
        steps.append(s)
    body: dict[str, Any] = {
        "steps": steps,
        "within_seconds": draw(st.sampled_from([1, 3600, 7200, 86400])),
        "completed": draw(st.booleans()),
    }
    w = draw(windows)
    if w:
        body["window"] = w
    return {"funnel": body}


leaf = st.one_of(event_node(), trait_node(), funnel_node())
trees = st.recursive(
    leaf,
    lambda kids: st.one_of(
        st.builds(lambda c: {"all": c}, st.lists(kids, min_size=1, max_size=3)),
        st.builds(lambda c: {"any": c}, st.lists(kids, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, kids),
    ),
    max_leaves=4,
)


@st.composite
def computed_defs(draw: st.DrawFn, with_ref: bool = False) -> dict[str, Any]:
    """A computed trait; `with_ref`: its first filter compares with a trait."""
    t = draw(
        st.sampled_from(
            [
                "event_count",
                "sum",
                "avg",
                "min",
                "max",
                "first",
                "last",
                "most_frequent",
                "unique_count",
                "unique_list",
            ]
        )
    )
    d: dict[str, Any] = {"type": t, "event": draw(st.sampled_from(["A", "B"]))}
    if t != "event_count":
        d["property"] = draw(st.sampled_from(["p", "q.r"]))
    if with_ref:
        d["where"] = [draw(trait_ref_filters), *draw(st.lists(filters(), max_size=1))]
    elif draw(st.booleans()):
        d["where"] = draw(st.lists(filters(), max_size=2))
    w = draw(windows)
    if w:
        d["window"] = w
    return d


@st.composite
def histories(draw: st.DrawFn, paths: bool = False) -> list[dict[str, Any]]:
    """Per profile: rows (1 canonical + 0-1 merged), events, trait rows."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        rows = draw(st.integers(1, 2))
        evs = []
        for _ in range(draw(st.integers(0, 7))):
            props: dict[str, Any] = {}
            if draw(st.booleans()):
                props["p"] = draw(st.sampled_from(PROP_VALUES))
            if draw(st.integers(0, 2)) == 0:
                props["q"] = {"r": draw(st.sampled_from(PROP_VALUES))}
            evs.append(
                {
                    "row": draw(st.integers(0, rows - 1)),
                    "type": draw(st.sampled_from(["track", "track", "track", "page"])),
                    "name": draw(st.sampled_from(["A", "B"])),
                    # hours before now; negative = after now; a coarse grid makes ties
                    "timestamp_us": NOW - draw(st.integers(-3, 150)) * HOUR // 2,
                    "properties": props if draw(st.integers(0, 5)) else None,
                }
            )
        traits = []
        for key in TRAIT_KEYS:
            # paths: every profile sets the literal "n.x" key and a nested "n" holding
            # "x", the meeting that tells a right reading of "n.x" from a wrong one.
            at_least = 1 if paths and key in ("n", "n.x") else 0
            for _ in range(draw(st.integers(at_least, 2))):
                if key == "n":
                    value = draw(nested_with_x if paths else nested_traits)
                else:
                    value = draw(trait_values)
                traits.append(
                    {
                        "row": draw(st.integers(0, rows - 1)),
                        "key": key,
                        "value": value,
                        "timestamp_us": NOW - draw(st.integers(0, 3)) * HOUR,
                    }
                )
        out.append({"rows": rows, "events": evs, "traits": traits})
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("segprop") / "prop.db"
    eng = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(eng)
    yield eng
    eng.dispose()


def load(conn: Any, ws: str, hist: list[dict[str, Any]]) -> dict[int, ProfileData]:
    """Insert one history under a fresh workspace; the reference view of each profile."""
    next_pid = (conn.execute(sa.select(sa.func.max(profiles.c.profile_id))).scalar() or 0) + 1
    next_seq = (conn.execute(sa.select(sa.func.max(events.c.seq))).scalar() or 0) + 1
    out: dict[int, ProfileData] = {}
    for h in hist:
        canonical = next_pid
        row_ids = [canonical + i for i in range(h["rows"])]
        next_pid += h["rows"]
        conn.execute(
            profiles.insert(),
            [
                {"profile_id": r, "workspace_id": ws, "canonical_id": canonical, "created_at_us": 0}
                for r in row_ids
            ],
        )
        evs = []
        for e in h["events"]:
            evs.append({**e, "seq": next_seq})
            next_seq += 1
        if evs:
            conn.execute(
                events.insert(),
                [
                    {
                        "seq": e["seq"],
                        "workspace_id": ws,
                        "message_id": f"m{e['seq']}",
                        "type": e["type"],
                        "name": e["name"],
                        "profile_id": row_ids[e["row"]],
                        "timestamp_us": e["timestamp_us"],
                        "received_at_us": e["seq"],
                        "properties": e["properties"] if e["properties"] is not None else sa.null(),
                    }
                    for e in evs
                ],
            )
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        for i, t in enumerate(h["traits"]):
            t = {**t, "seq": i}
            cur = latest.get((t["row"], t["key"]))
            if cur is None or (cur["timestamp_us"], cur["seq"]) < (t["timestamp_us"], t["seq"]):
                latest[(t["row"], t["key"])] = t
        if latest:
            conn.execute(
                profile_traits.insert(),
                [
                    {
                        "profile_id": row_ids[t["row"]],
                        "key": t["key"],
                        "workspace_id": ws,
                        "value": t["value"] if t["value"] is not None else sa.null(),
                        "timestamp_us": t["timestamp_us"],
                        "seq": t["seq"],
                    }
                    for t in latest.values()
                ],
            )
        # Across the merged rows the latest (timestamp, seq) wins per key.
        best: dict[str, dict[str, Any]] = {}
        for t in latest.values():
            if t["key"] not in best or (best[t["key"]]["timestamp_us"], best[t["key"]]["seq"]) < (
                t["timestamp_us"],
                t["seq"],
            ):
                best[t["key"]] = t
        traits = {k: t["value"] for k, t in best.items() if t["value"] is not None}
        out[canonical] = ProfileData(events=evs, traits=traits)
    return out


def _members(conn: Any, ws: str, node: Any) -> set[int]:
    q = compile_audience(node, workspace_id=ws, now_us=NOW, dialect="sqlite")
    return {r[0] for r in conn.execute(q)}


@st.composite
def trait_path_nodes(draw: st.DrawFn) -> dict[str, Any]:
    """A trait condition or an event whose filter compares with a trait, by one of the
    names that walk into nested values or match a literal dotted key."""
    if draw(st.booleans()):
        return draw(trait_node())
    return {"event": {"name": "A", "where": [draw(trait_ref_filters)]}}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(paths=True), definition=trait_path_nodes())
def test_trait_paths_match_reference(
    engine: Any, hist: list[dict[str, Any]], definition: Any
) -> None:
    """Dotted trait names, singled out: in the mixed trees above a condition on them
    meets a profile with both a literal dotted key and a nested value too rarely."""
    ws = f"path{next(_ws_counter)}"
    node = parse_audience(definition)
    with engine.begin() as conn:
        data = load(conn, ws, hist)
        want = {pid for pid, p in data.items() if evaluate(node, p, NOW)}
        assert _members(conn, ws, node) == want, (definition, hist)


def _computed_values(conn: Any, ws: str, cdef: Any) -> dict[int, Any]:
    q = compile_computed_trait(cdef, workspace_id=ws, now_us=NOW, dialect="sqlite")
    return {r[0]: r[1] for r in conn.execute(q)}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(paths=True), computed=computed_defs(with_ref=True))
def test_computed_trait_refs_match_reference(
    engine: Any, hist: list[dict[str, Any]], computed: Any
) -> None:
    """Computed traits whose filters compare with the person's (latest, merged) trait."""
    ws = f"cref{next(_ws_counter)}"
    cdef = parse_computed_trait(computed)
    with engine.begin() as conn:
        data = load(conn, ws, hist)
        values = _computed_values(conn, ws, cdef)
    expected = {pid: compute_trait(cdef, p.events, NOW, p.traits) for pid, p in data.items()}
    assert values.keys() == expected.keys()
    for pid in expected:
        assert close(values[pid], expected[pid]), (computed, pid, values[pid], expected, hist)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hist=histories(), definition=trees, computed=computed_defs())
def test_sql_matches_reference(
    engine: Any, hist: list[dict[str, Any]], definition: Any, computed: Any
) -> None:
    ws = f"prop{next(_ws_counter)}"
    node = parse_audience(definition)
    cdef = parse_computed_trait(computed)
    with engine.begin() as conn:
        data = load(conn, ws, hist)
        want = {pid for pid, p in data.items() if evaluate(node, p, NOW)}
        got = {
            r[0]
            for r in conn.execute(
                compile_audience(node, workspace_id=ws, now_us=NOW, dialect="sqlite")
            )
        }
        assert got == want, (definition, hist)
        # The rollup: the tree and its negation in one statement share every event
        # column, and each must still agree with the reference.
        both = [node, parse_audience({"not": definition})]
        rows = conn.execute(compile_audiences(both, workspace_id=ws, now_us=NOW, dialect="sqlite"))
        flags = {r[0]: (bool(r[1]), bool(r[2])) for r in rows}
        assert {p for p, f in flags.items() if f[0]} == want, (definition, hist)
        assert {p for p, f in flags.items() if f[1]} == data.keys() - want, (definition, hist)
        values = _computed_values(conn, ws, cdef)
        expected = {pid: compute_trait(cdef, p.events, NOW, p.traits) for pid, p in data.items()}
        assert values.keys() == expected.keys()
        for pid in expected:
            assert close(values[pid], expected[pid]), (
                computed,
                pid,
                values[pid],
                expected[pid],
                hist,
            )
