"""The identity resolver and trait winners on their own (pure logic)."""

import pytest

from services.ingest.identity import IdentityGraph, IdentityRow, IdentityRules
from services.ingest.model import RawEvent
from services.ingest.traits import TraitRow, winners
from services.ingest.validation import MAX_JSON_DEPTH, validate

pytestmark = pytest.mark.unit
NOW = 1_735_689_600_000_000


def accepted(**fields):  # type: ignore[no-untyped-def]
    event, violations = validate(RawEvent(**fields), 0, "event", NOW)
    assert violations == []
    return event


def test_a_second_user_id_gets_its_own_profile_and_the_shared_id_stays() -> None:
    graph = IdentityGraph(IdentityRules(), NOW)
    graph.load(
        [
            IdentityRow("user_id", "u1", 7, NOW - 10, None),
            IdentityRow("anonymous_id", "a", 7, NOW - 10, None),
        ]
    )
    pid = graph.resolve(accepted(type="track", event="E", user_id="u2", anonymous_id="a"))
    assert pid < 0 and graph.owner[("anonymous_id", "a")] == 7
    assert graph.merges == []


def test_the_older_profile_survives_and_takes_every_identifier() -> None:
    graph = IdentityGraph(IdentityRules(), NOW)
    graph.load(
        [
            IdentityRow("anonymous_id", "a", 9, NOW - 5, None),
            IdentityRow("user_id", "u", 4, NOW - 50, None),
        ]
    )
    pid = graph.resolve(accepted(type="identify", user_id="u", anonymous_id="a"))
    assert pid == 4
    assert [(m.survivor_id, m.merged_id) for m in graph.merges] == [(4, 9)]
    assert graph.nodes[4].ids == {"user_id": {"u"}, "anonymous_id": {"a"}}


def test_blocked_values_never_link() -> None:
    rules = IdentityRules.parse({"blocked_values": ["guest"]})
    graph = IdentityGraph(rules, NOW)
    first = graph.resolve(accepted(type="track", event="E", user_id="u1", anonymous_id="Guest"))
    second = graph.resolve(accepted(type="track", event="E", user_id="u2", anonymous_id="guest"))
    assert first != second and ("anonymous_id", "guest") not in graph.owner


def test_trait_winners_ignore_arrival_order() -> None:
    rows = [
        TraitRow(1, "plan", "b", 20, 2),
        TraitRow(1, "plan", "a", 10, 3),
        TraitRow(1, "plan", None, 20, 5),
    ]
    assert winners(rows)[(1, "plan")].value is None
    assert winners(reversed(rows))[(1, "plan")].value is None


def test_depth_limit_counts_nested_objects() -> None:
    nested: dict = {}
    node = nested
    for _ in range(MAX_JSON_DEPTH - 1):
        node["x"] = {}
        node = node["x"]
    assert (
        validate(
            RawEvent(type="track", event="E", user_id="u", properties=nested), 0, "event", NOW
        )[1]
        == []
    )
    node["x"] = {}
    (violation,) = validate(
        RawEvent(type="track", event="E", user_id="u", properties=nested), 0, "event", NOW
    )[1]
    assert violation.field == "event.properties"
