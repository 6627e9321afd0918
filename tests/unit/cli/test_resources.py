"""Definitions files: parsing, validation, apply order and the plan apply shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from audiences.v1 import prediction_pb2, segmentation_pb2, sync_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences_cli import resources as res

pytestmark = pytest.mark.unit

LOYAL = """
kind: audience
key: loyal
name: Loyal
definition:
  event: {name: Order Completed, count: {op: gte, value: 2}}
"""


def doc(kind: str, **spec: Any) -> res.Document:
    return res.Document(kind, spec, "test")


def test_documents_of_a_multi_document_file() -> None:
    text = LOYAL + "---\nkind: computed-traits\nkey: spend\ndefinition: {type: sum}\n---\n"
    documents = res.parse_documents(text, "defs.yaml")
    assert [(d.kind, d.name, d.source) for d in documents] == [
        ("audience", "loyal", "defs.yaml#1"),
        ("computed_trait", "spend", "defs.yaml#2"),
    ]
    assert documents[0].spec["definition"]["event"]["count"] == {"op": "gte", "value": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: audience\nkey: a\ndefinitoin: {}\n", "unknown field(s) definitoin"),
        ("kind: audience\nname: no key\n", "needs `key`"),
        ("kind: widget\nkey: a\n", "unknown kind 'widget'"),
        ("- just a list\n", "a mapping with a `kind`"),
        ("kind: sync\ndestination: d\n", "exactly one of audience"),
        ("kind: sync\ndestination: d\naudience: a\nprediction: p\n", "exactly one of"),
        ("kind: destination\nname: d\n", "needs `name` and `type`"),
        ("kind: audience\nkey: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_document_is_named_with_its_reason(text: str, message: str) -> None:
    with pytest.raises(res.DefinitionError, match=r"defs\.yaml") as raised:
        res.parse_documents(text, "defs.yaml")
    assert message in str(raised.value)


def test_what_get_prints_applies_back() -> None:
    # `audiences get -o yaml` adds a status block; apply reads past it.
    (document,) = res.parse_documents(LOYAL + "status: {state: live, size: 3}\n", "got.yaml")
    assert "status" not in document.spec


def test_directories_are_read_recursively_and_duplicates_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "loyal.yaml").write_text(LOYAL)
    (tmp_path / "notes.txt").write_text("not a definition")
    assert [d.name for d in res.load_documents([tmp_path])] == ["loyal"]
    (tmp_path / "again.yml").write_text(LOYAL)
    with pytest.raises(res.DefinitionError, match="also defined at"):
        res.load_documents([tmp_path])
    with pytest.raises(res.DefinitionError, match="no such file"):
        res.load_documents([tmp_path / "missing.yaml"])


def test_apply_order_puts_what_is_referenced_first() -> None:
    documents = [
        doc("sync", destination="files", audience="vip"),
        doc("audience", key="vip", definition={"audience": {"key": "buyers"}}),
        doc("destination", name="files", type="file"),
        doc("audience", key="buyers", definition={"computed": {"key": "spend", "op": "gt"}}),
        doc("prediction", key="churn", population="vip"),
        doc("computed_trait", key="spend"),
    ]
    order = [(d.kind, d.name) for d in res.apply_order(documents)]
    for before, after in [
        (("computed_trait", "spend"), ("audience", "buyers")),
        (("audience", "buyers"), ("audience", "vip")),
        (("audience", "vip"), ("prediction", "churn")),
        (("destination", "files"), ("sync", "files/vip")),
        (("audience", "vip"), ("sync", "files/vip")),
    ]:
        assert order.index(before) < order.index(after), order


def test_a_reference_cycle_is_refused_with_the_cycle_named() -> None:
    documents = [
        doc("audience", key="a", definition={"audience": {"key": "b"}}),
        doc("audience", key="b", definition={"not": {"audience": {"key": "a"}}}),
    ]
    with pytest.raises(res.DefinitionError, match="cycle: audience a -> audience b -> audience a"):
        res.apply_order(documents)


def server_audience(**changes: Any) -> dict[str, Any]:
    audience = segmentation_pb2.Audience(
        key="loyal",
        name="Loyal",
        definition=json.dumps(
            {"event": {"name": "Order Completed", "count": {"op": "gte", "value": 2}}}
        ).encode(),
        version=3,
    )
    spec = res.audience_spec(audience)
    spec.update(changes)
    return spec


def test_an_unchanged_object_is_left_alone() -> None:
    (document,) = res.parse_documents(LOYAL, "defs.yaml")
    assert res.plan_change(document, server_audience()).action == "unchanged"
    assert res.plan_change(document, None).action == "create"


def test_a_changed_definition_is_an_update_with_a_diff_of_what_changed() -> None:
    (document,) = res.parse_documents(LOYAL.replace("value: 2", "value: 3"), "defs.yaml")
    change = res.plan_change(document, server_audience(description="kept"))
    assert change.action == "update"
    assert "-      value: 2" in change.diff and "+      value: 3" in change.diff
    assert "description" not in change.diff  # not in the file: the server's to keep
    assert change.diff.startswith("--- audience loyal (server)\n+++ audience loyal (defs.yaml#1)")


def test_numbers_compare_by_value_and_booleans_by_type() -> None:
    assert not res.differences("audience", {"definition": {"v": 1}}, {"definition": {"v": 1.0}})
    assert res.differences("audience", {"definition": {"v": True}}, {"definition": {"v": 1}})
    assert res.differences("audience", {"definition": {"v": "1"}}, {"definition": {"v": 1}})


def test_empty_defaults_the_server_spells_out_are_no_change() -> None:
    prediction = prediction_pb2.Prediction(
        key="p", name="p", goal=b'{"event": "Order Completed", "where": []}', horizon_days=7
    )
    wanted = {"key": "p", "goal": {"event": "Order Completed"}, "horizon_days": 7}
    assert not res.differences("prediction", wanted, res.prediction_spec(prediction))
    # ... but a field the server has with a value the file lacks is a change.
    wanted["goal"] = {"event": "Order Completed", "where": [{"property": "x", "op": "exists"}]}
    assert res.differences("prediction", wanted, res.prediction_spec(prediction)) == ["goal"]


def test_kinds_without_an_update_rpc_are_replaced() -> None:
    change = res.plan_change(
        doc("prediction", key="p", horizon_days=30), {"key": "p", "horizon_days": 7}
    )
    assert change.action == "replace"
    change = res.plan_change(doc("audience", key="a", account_level=True), server_audience(key="a"))
    assert change.action == "replace"  # an audience's population cannot change in place


def test_destination_secrets_come_from_the_environment_and_are_never_compared() -> None:
    spec = {"name": "hook", "type": "webhook", "base_url": "https://x", "secret_env": "HOOK_KEY"}
    message = res.destination_message(spec, {"HOOK_KEY": "s3cret"})
    assert message.secret == "s3cret" and message.kind == sync_pb2.DESTINATION_KIND_WEBHOOK
    current = res.destination_spec(message)
    assert res.plan_change(res.Document("destination", spec, "d"), current).action == "unchanged"
    with pytest.raises(res.DefinitionError, match=r"\$HOOK_KEY is not set"):
        res.destination_message(spec, {})
    with pytest.raises(res.DefinitionError, match="destination type 'ftp'"):
        res.destination_message({**spec, "type": "ftp"}, {"HOOK_KEY": "k"})


def test_syncs_are_named_by_destination_and_source() -> None:
    spec = {"destination": "files", "audience": "vip", "cadence": "daily", "id_type": "email"}
    message = res.sync_message(spec, "dst_1")
    assert message.source == sync_pb2.SYNC_SOURCE_AUDIENCE
    assert message.cadence == sync_pb2.SYNC_CADENCE_DAILY
    back = res.sync_spec(message, {"dst_1": "files"})
    assert res.object_name("sync", back) == "files/vip"
    assert not res.differences("sync", spec, back)


def test_relative_file_directories_become_absolute(tmp_path: Path) -> None:
    documents = [
        doc("destination", name="f", type="file", directory="var/out"),
        doc("destination", name="g", type="file", directory="/srv/out"),
    ]
    resolved = res.with_absolute_directories(documents, tmp_path)
    assert resolved[0].spec["directory"] == str(tmp_path / "var" / "out")
    assert resolved[1].spec["directory"] == "/srv/out"


def test_kind_names_people_type() -> None:
    assert {res.kind_of(k) for k in ("audiences", "computed-traits", "traits", "syncs")} == {
        "audience",
        "computed_trait",
        "sync",
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(definition=JSON, name=st.text(max_size=8), realtime=st.booleans())
def test_what_apply_sends_reads_back_as_unchanged(
    definition: Any, name: str, realtime: bool
) -> None:
    # The spec made into the message apply sends, then read back as the server's
    # object, is never a change: apply twice does nothing the second time.
    spec = {"key": "k", "name": name or "k", "definition": definition, "realtime": realtime}
    document = res.Document("audience", spec, "prop")
    echoed = res.audience_spec(res.audience_message(spec))
    assert res.plan_change(document, echoed).action == "unchanged"


@pytest.mark.parametrize(
    ("kind", "spec", "to_message", "to_spec"),
    [
        (
            "audience",
            {
                "key": "vip",
                "definition": {"trait": {"name": "plan", "op": "eq", "value": "pro"}},
                "holdout_share": 0.1,
                "goal": {"name": "Order Completed", "within_hours": 48},
            },
            res.audience_message,
            res.audience_spec,
        ),
        (
            "recommendation",
            {
                "key": "shop",
                "item_events": [{"event_name": "Order", "weight": 5}],
                "item_property": "sku",
                "goal_event": "Order",
            },
            res.recommendation_message,
            res.recommendation_spec,
        ),
    ],
)
def test_newer_fields_travel_both_ways(kind: str, spec: Any, to_message: Any, to_spec: Any) -> None:
    # Holdouts and goals (personalization), a recommendation goal event: apply sends
    # them and reads them back as no change.
    echoed = to_spec(to_message(spec))
    assert res.plan_change(res.Document(kind, spec, "f"), echoed).action == "unchanged"
    assert {name: echoed[name] for name in spec} == {
        name: res._normal(kind, name, value) for name, value in spec.items()
    }


def test_sync_options_travel_both_ways() -> None:
    spec = {
        "destination": "hook",
        "recommendation": "shop",
        "cadence": "daily",
        "active_within_days": 30,
        "exclude_holdout": True,
        "item_metadata": True,
    }
    message = res.sync_message(spec, "d1")
    assert (message.active_within_days, message.exclude_holdout, message.item_metadata) == (
        30,
        True,
        True,
    )
    echoed = res.sync_spec(message, {"d1": "hook"})
    assert res.plan_change(res.Document("sync", spec, "f"), echoed).action == "unchanged"
