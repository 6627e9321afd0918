"""Declarative definitions: YAML documents <-> specs <-> protobuf messages, and the
plan that `audiences apply` shows before it changes anything.

A *spec* is a plain dict of one object's settings as they read in YAML. The server's
object is turned into the same shape, and a plan compares only the fields a file
gives (a field left out is the server's to default), with a definition, goal or list
compared whole. Pure logic apart from the protobuf conversions: no I/O, no gRPC.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from audiences.v1 import prediction_pb2, profile_pb2, segmentation_pb2, sync_pb2

# Kinds in the order objects are applied when no reference says otherwise: what others
# may name comes first (a sync names a destination and its source).
KINDS = ("computed_trait", "audience", "prediction", "recommendation", "destination", "sync")
ALIASES = {
    "audience": "audience",
    "audiences": "audience",
    "computed_trait": "computed_trait",
    "computed_traits": "computed_trait",
    "computed-trait": "computed_trait",
    "computed-traits": "computed_trait",
    "trait": "computed_trait",
    "traits": "computed_trait",
    "prediction": "prediction",
    "predictions": "prediction",
    "recommendation": "recommendation",
    "recommendations": "recommendation",
    "destination": "destination",
    "destinations": "destination",
    "sync": "sync",
    "syncs": "sync",
}
# Fields each kind's YAML may carry (besides `kind`); anything else is a typo to report.
FIELDS: dict[str, tuple[str, ...]] = {
    "audience": (
        "key",
        "name",
        "description",
        "definition",
        "realtime",
        "account_level",
        "holdout_share",
        "goal",
    ),
    "computed_trait": ("key", "name", "definition", "realtime"),
    "prediction": ("key", "name", "goal", "horizon_days", "population"),
    "recommendation": (
        "key",
        "item_events",
        "item_property",
        "size",
        "recommend_consumed",
        "exclusions",
        "goal_event",
    ),
    "destination": (
        "name",
        "type",
        "base_url",
        "directory",
        "file_format",
        "secret",
        "secret_env",
        "rate_limit_per_second",
        "batch_size",
        "timeout_seconds",
        "options",
    ),
    "sync": (
        "destination",
        "audience",
        "computed_trait",
        "prediction",
        "recommendation",
        "cadence",
        "id_type",
        "max_removal_fraction",
        "paused",
        "active_within_days",
        "exclude_holdout",
        "item_metadata",
    ),
}
SYNC_SOURCES = ("audience", "computed_trait", "prediction", "recommendation")
# Write-only or local-only fields: never returned by the server, so never compared.
NOT_COMPARED = {"destination": ("secret", "secret_env")}
# Kinds the services can update in place; the others are replaced (delete + create).
UPDATABLE = {"audience", "computed_trait", "destination", "sync"}


class DefinitionError(ValueError):
    """A definitions file that cannot be applied as written (path and reason)."""


def kind_of(text: str) -> str:
    """The canonical kind for a name the user typed (audiences, computed-trait, ...)."""
    kind = ALIASES.get(text.strip().lower())
    if kind is None:
        raise DefinitionError(f"unknown kind {text!r}; one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class Document:
    """One object from a definitions file."""

    kind: str
    spec: dict[str, Any]
    source: str  # file:document-number, for messages

    @property
    def name(self) -> str:
        return object_name(self.kind, self.spec)


def object_name(kind: str, spec: Mapping[str, Any]) -> str:
    """How an object is named on the command line and in plans: its key; a
    destination's name; a sync's `destination/source_key`."""
    if kind == "destination":
        return str(spec.get("name", ""))
    if kind == "sync":
        return f"{spec.get('destination', '')}/{sync_source(spec)[1]}"
    return str(spec.get("key", ""))


def sync_source(spec: Mapping[str, Any]) -> tuple[str, str]:
    """A sync spec's (source kind, source key): exactly one of its source fields."""
    given = [(kind, str(spec[kind])) for kind in SYNC_SOURCES if spec.get(kind)]
    return given[0] if len(given) == 1 else ("", "")


def validate(kind: str, spec: Mapping[str, Any], where: str) -> None:
    """DefinitionError for an unknown field or a missing identity."""
    unknown = sorted(set(spec) - set(FIELDS[kind]))
    if unknown:
        raise DefinitionError(
            f"{where}: unknown field(s) {', '.join(unknown)} for kind {kind} "
            f"(known: {', '.join(FIELDS[kind])})"
        )
    if kind == "destination":
        if not spec.get("name") or not spec.get("type"):
            raise DefinitionError(f"{where}: a destination needs `name` and `type`")
    elif kind == "sync":
        if not spec.get("destination"):
            raise DefinitionError(f"{where}: a sync needs `destination` (a destination name)")
        if sync_source(spec) == ("", ""):
            raise DefinitionError(f"{where}: a sync needs exactly one of {', '.join(SYNC_SOURCES)}")
    elif not spec.get("key"):
        raise DefinitionError(f"{where}: a {kind} needs `key`")


def parse_documents(text: str, source: str) -> list[Document]:
    """Every object in one YAML (or JSON) text of `---`-separated documents."""
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        raise DefinitionError(f"{source}: not valid YAML: {error}") from error
    documents: list[Document] = []
    for number, raw in enumerate(loaded, start=1):
        if raw is None:
            continue  # an empty document, e.g. a trailing `---`
        where = f"{source}#{number}"
        if not isinstance(raw, dict) or "kind" not in raw:
            raise DefinitionError(f"{where}: each document is a mapping with a `kind`")
        spec = dict(raw)
        try:
            kind = kind_of(str(spec.pop("kind")))
        except DefinitionError as error:
            raise DefinitionError(f"{where}: {error}") from error
        spec.pop("status", None)  # what `audiences get` shows besides the spec
        validate(kind, spec, where)
        documents.append(Document(kind, spec, where))
    return documents


def definition_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML/JSON files named, directories searched recursively, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
            )
        elif path.exists():
            found.append(path)
        else:
            raise DefinitionError(f"{path}: no such file or directory")
    return found


def load_documents(paths: Iterable[Path]) -> list[Document]:
    """Every object of every definitions file; DefinitionError on a duplicate name."""
    documents: list[Document] = []
    for path in definition_files(paths):
        documents += parse_documents(path.read_text(encoding="utf-8"), str(path))
    seen: dict[tuple[str, str], str] = {}
    for document in documents:
        ident = (document.kind, document.name)
        if ident in seen:
            raise DefinitionError(
                f"{document.source}: {document.kind} {document.name} is also defined at "
                f"{seen[ident]}"
            )
        seen[ident] = document.source
    return documents


def references(document: Document) -> set[tuple[str, str]]:
    """The (kind, name) objects this one names and needs first."""
    spec = document.spec
    needs: set[tuple[str, str]] = set()
    if document.kind == "audience":
        _tree_references(spec.get("definition"), needs)
    elif document.kind == "prediction" and spec.get("population"):
        needs.add(("audience", str(spec["population"])))
    elif document.kind == "sync":
        needs.add(("destination", str(spec["destination"])))
        needs.add(sync_source(spec))
    return needs


def _tree_references(node: Any, needs: set[tuple[str, str]]) -> None:
    # The audience language names other objects in these nodes (docs/audiences.md).
    if isinstance(node, list):
        for child in node:
            _tree_references(child, needs)
    elif isinstance(node, dict):
        for kind, field_name in (("audience", "audience"), ("computed_trait", "computed")):
            inner = node.get(field_name)
            if isinstance(inner, dict) and "key" in inner:
                needs.add((kind, str(inner["key"])))
        inner = node.get("prediction")
        if isinstance(inner, dict) and "key" in inner:
            needs.add(("prediction", str(inner["key"])))
        for value in node.values():
            _tree_references(value, needs)


def apply_order(documents: list[Document]) -> list[Document]:
    """Documents ordered so each comes after the objects of this set it references
    (kind order, then file order, breaks ties); DefinitionError on a cycle."""
    by_ident = {(d.kind, d.name): d for d in documents}
    rank = {id(d): (KINDS.index(d.kind), i) for i, d in enumerate(documents)}
    ordered: list[Document] = []
    state: dict[tuple[str, str], str] = {}

    def visit(document: Document, path: list[str]) -> None:
        ident = (document.kind, document.name)
        if state.get(ident) == "done":
            return
        if state.get(ident) == "visiting":
            raise DefinitionError(
                "definitions reference each other in a cycle: "
                + " -> ".join([*path, f"{document.kind} {document.name}"])
            )
        state[ident] = "visiting"
        needed = [by_ident[r] for r in references(document) if r in by_ident and r != ident]
        for dependency in sorted(needed, key=lambda d: rank[id(d)]):
            visit(dependency, [*path, f"{document.kind} {document.name}"])
        state[ident] = "done"
        ordered.append(document)

    for document in sorted(documents, key=lambda d: rank[id(d)]):
        visit(document, [])
    return ordered


# --- server objects as specs -------------------------------------------------------


def _json(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


def audience_spec(a: segmentation_pb2.Audience) -> dict[str, Any]:
    return {
        "key": a.key,
        "name": a.name,
        "description": a.description,
        "definition": _json(a.definition),
        "realtime": a.realtime,
        "account_level": a.account_level,
        "holdout_share": a.holdout_share,
        "goal": _json(a.goal) if a.goal else None,
    }


def computed_trait_spec(c: segmentation_pb2.ComputedTrait) -> dict[str, Any]:
    return {
        "key": c.key,
        "name": c.name,
        "definition": _json(c.definition),
        "realtime": c.realtime,
    }


def prediction_spec(p: prediction_pb2.Prediction) -> dict[str, Any]:
    return {
        "key": p.key,
        "name": p.name,
        "goal": _json(p.goal),
        "horizon_days": p.horizon_days,
        "population": p.population,
    }


def recommendation_spec(m: profile_pb2.RecommendationModel) -> dict[str, Any]:
    return {
        "key": m.key,
        "item_events": [
            {"event_name": e.event_name, "weight": e.weight or 1.0} for e in m.item_events
        ],
        "item_property": m.item_property,
        "size": m.size,
        "recommend_consumed": m.recommend_consumed,
        "exclusions": [{"property": x.property, "values": list(x.values)} for x in m.exclusions],
        "goal_event": m.goal_event,
    }


DESTINATION_TYPES = {
    "webhook": sync_pb2.DESTINATION_KIND_WEBHOOK,
    "file": sync_pb2.DESTINATION_KIND_FILE,
    "braze": sync_pb2.DESTINATION_KIND_BRAZE,
    "amplitude": sync_pb2.DESTINATION_KIND_AMPLITUDE,
}
CADENCES = {
    "one_time": sync_pb2.SYNC_CADENCE_ONE_TIME,
    "hourly": sync_pb2.SYNC_CADENCE_HOURLY,
    "daily": sync_pb2.SYNC_CADENCE_DAILY,
    "realtime": sync_pb2.SYNC_CADENCE_REALTIME,
}
SOURCES = {
    "audience": sync_pb2.SYNC_SOURCE_AUDIENCE,
    "computed_trait": sync_pb2.SYNC_SOURCE_COMPUTED_TRAIT,
    "prediction": sync_pb2.SYNC_SOURCE_PREDICTION,
    "recommendation": sync_pb2.SYNC_SOURCE_RECOMMENDATION,
}


def _name_of(mapping: Mapping[str, int], value: int) -> str:
    return next((name for name, number in mapping.items() if number == value), str(value))


def destination_spec(d: sync_pb2.Destination) -> dict[str, Any]:
    return {
        "name": d.name,
        "type": _name_of(DESTINATION_TYPES, d.kind),
        "base_url": d.base_url,
        "directory": d.directory,
        "file_format": d.file_format,
        "rate_limit_per_second": d.rate_limit_per_second,
        "batch_size": d.batch_size,
        "timeout_seconds": d.timeout_seconds,
        "options": dict(d.options),
    }


def sync_spec(s: sync_pb2.Sync, destination_names: Mapping[str, str]) -> dict[str, Any]:
    """A sync as a spec; its destination by name (`destination_names`: id -> name)."""
    return {
        "destination": destination_names.get(s.destination_id, s.destination_id),
        _name_of(SOURCES, s.source): s.source_key,
        "cadence": _name_of(CADENCES, s.cadence),
        "id_type": s.id_type,
        "max_removal_fraction": s.max_removal_fraction,
        "paused": s.paused,
        "active_within_days": s.active_within_days,
        "exclude_holdout": s.exclude_holdout,
        "item_metadata": s.item_metadata,
    }


# --- specs as protobuf messages -------------------------------------------------------


def _bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _choice(mapping: Mapping[str, int], value: Any, what: str) -> str:
    """The enum value name for a YAML word (e.g. file -> DESTINATION_KIND_FILE)."""
    if str(value) not in mapping:
        raise DefinitionError(f"{what} {value!r}: one of {', '.join(mapping)}")
    return str(value).upper()


def audience_message(spec: Mapping[str, Any]) -> segmentation_pb2.Audience:
    message = segmentation_pb2.Audience(
        key=spec["key"],
        name=str(spec.get("name") or spec["key"]),
        description=str(spec.get("description", "")),
        definition=_bytes(spec.get("definition")),
        account_level=bool(spec.get("account_level", False)),
    )
    if "realtime" in spec:
        message.realtime = bool(spec["realtime"])
    if "holdout_share" in spec:
        message.holdout_share = float(spec["holdout_share"])
    if spec.get("goal") is not None:
        message.goal = _bytes(spec["goal"])
    return message


def computed_trait_message(spec: Mapping[str, Any]) -> segmentation_pb2.ComputedTrait:
    message = segmentation_pb2.ComputedTrait(
        key=spec["key"],
        name=str(spec.get("name") or spec["key"]),
        definition=_bytes(spec.get("definition")),
    )
    if "realtime" in spec:
        message.realtime = bool(spec["realtime"])
    return message


def prediction_message(spec: Mapping[str, Any]) -> prediction_pb2.Prediction:
    return prediction_pb2.Prediction(
        key=spec["key"],
        name=str(spec.get("name") or spec["key"]),
        goal=_bytes(spec.get("goal")),
        horizon_days=int(spec.get("horizon_days", 0)),
        population=str(spec.get("population", "")),
    )


def recommendation_message(spec: Mapping[str, Any]) -> profile_pb2.RecommendationModel:
    return profile_pb2.RecommendationModel(
        key=spec["key"],
        item_events=[
            profile_pb2.ItemEvent(event_name=str(e["event_name"]), weight=float(e.get("weight", 1)))
            for e in spec.get("item_events", [])
        ],
        item_property=str(spec.get("item_property", "")),
        size=int(spec.get("size", 0)),
        recommend_consumed=bool(spec.get("recommend_consumed", False)),
        exclusions=[
            profile_pb2.ItemExclusion(
                property=str(x["property"]), values=[str(v) for v in x.get("values", [])]
            )
            for x in spec.get("exclusions", [])
        ],
        goal_event=str(spec.get("goal_event", "")),
    )


def destination_message(
    spec: Mapping[str, Any], env: Mapping[str, str], destination_id: str = ""
) -> sync_pb2.Destination:
    """A destination message; `secret_env` names an environment variable holding the
    secret, so secrets stay out of definition files kept in git."""
    secret = str(spec.get("secret", ""))
    if spec.get("secret_env"):
        name = str(spec["secret_env"])
        if name not in env:
            raise DefinitionError(f"destination {spec['name']}: ${name} is not set")
        secret = env[name]
    return sync_pb2.Destination(
        id=destination_id,
        name=str(spec["name"]),
        kind=sync_pb2.DestinationKind.Value(
            "DESTINATION_KIND_" + _choice(DESTINATION_TYPES, spec["type"], "destination type")
        ),
        base_url=str(spec.get("base_url", "")),
        directory=str(spec.get("directory", "")),
        file_format=str(spec.get("file_format", "")),
        secret=secret,
        rate_limit_per_second=float(spec.get("rate_limit_per_second", 0)),
        batch_size=int(spec.get("batch_size", 0)),
        timeout_seconds=float(spec.get("timeout_seconds", 0)),
        options={str(k): str(v) for k, v in (spec.get("options") or {}).items()},
    )


def sync_message(spec: Mapping[str, Any], destination_id: str, sync_id: str = "") -> sync_pb2.Sync:
    source, source_key = sync_source(spec)
    return sync_pb2.Sync(
        id=sync_id,
        destination_id=destination_id,
        source=SOURCES[source],
        source_key=source_key,
        cadence=sync_pb2.SyncCadence.Value(
            "SYNC_CADENCE_" + _choice(CADENCES, spec.get("cadence", "one_time"), "sync cadence")
        ),
        id_type=str(spec.get("id_type", "")),
        max_removal_fraction=float(spec.get("max_removal_fraction", 0)),
        paused=bool(spec.get("paused", False)),
        active_within_days=int(spec.get("active_within_days", 0)),
        exclude_holdout=bool(spec.get("exclude_holdout", False)),
        item_metadata=bool(spec.get("item_metadata", False)),
    )


# --- plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What apply does with one document: create, update, replace or nothing."""

    action: str  # "create", "update", "replace", "unchanged"
    document: Document
    diff: str  # unified diff of the compared fields (empty when unchanged or created)


def _number_equal(a: Any, b: Any) -> bool:
    # YAML `1` and the server's 1.0 are the same setting; booleans are not numbers.
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    if isinstance(a, numbers) and isinstance(b, numbers):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        # The server may spell out an empty default the file left out (`where: []`).
        extra_empty = all(b[k] in (None, "", [], {}) for k in b.keys() - a.keys())
        return a.keys() <= b.keys() and extra_empty and all(_number_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_number_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compared_fields(kind: str, wanted: Mapping[str, Any]) -> list[str]:
    """The fields of a file's spec that a plan compares with the server's object."""
    skip = NOT_COMPARED.get(kind, ())
    return [name for name in wanted if name not in skip]


def differences(kind: str, wanted: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The fields where the file and the server disagree."""
    return [
        name
        for name in compared_fields(kind, wanted)
        if not _number_equal(_normal(kind, name, wanted[name]), current.get(name))
    ]


def _normal(kind: str, name: str, value: Any) -> Any:
    # What the server would hold for a value written more loosely in YAML.
    if kind == "recommendation" and name == "item_events" and isinstance(value, list):
        return [{"event_name": e.get("event_name"), "weight": e.get("weight", 1.0)} for e in value]
    if kind == "recommendation" and name == "exclusions" and isinstance(value, list):
        return [
            {"property": x.get("property"), "values": [str(v) for v in x.get("values", [])]}
            for x in value
        ]
    if kind == "destination" and name == "options" and isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return value


def dump_yaml(value: Any) -> str:
    """YAML the way the CLI prints it: keys in their given order, block style."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


def plan_change(document: Document, current: Mapping[str, Any] | None) -> Change:
    """The change apply would make for `document` given the server's spec (or None)."""
    if current is None:
        return Change("create", document, "")
    changed = differences(document.kind, document.spec, current)
    if not changed:
        return Change("unchanged", document, "")
    before = dump_yaml({name: current.get(name) for name in changed}).splitlines()
    after = dump_yaml(
        {name: _normal(document.kind, name, document.spec[name]) for name in changed}
    ).splitlines()
    diff = "\n".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"{document.kind} {document.name} (server)",
            tofile=f"{document.kind} {document.name} ({document.source})",
            lineterm="",
        )
    )
    action = "update" if document.kind in UPDATABLE else "replace"
    if document.kind == "audience" and "account_level" in changed:
        action = "replace"  # the evaluation's population cannot change in place
    return Change(action, document, diff)


def with_absolute_directories(documents: list[Document], base: Path) -> list[Document]:
    """File destinations with a relative `directory` made absolute against `base`: the
    sync service needs an absolute path, and next to `make run` (same machine) a path
    relative to where the command runs is what the writer meant."""
    resolved: list[Document] = []
    for document in documents:
        directory = document.spec.get("directory")
        if document.kind == "destination" and directory and not Path(directory).is_absolute():
            spec = {**document.spec, "directory": str((base / directory).resolve())}
            document = Document(document.kind, spec, document.source)
        resolved.append(document)
    return resolved
