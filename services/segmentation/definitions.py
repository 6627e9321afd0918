"""Checking definitions that arrive through the API, with violations named by the
request field they sit in (e.g. ``audience.definition.all[1].event.count.op``).

The language itself (language.py) knows nothing of requests or of other audiences;
this module adds what needs the workspace: references to audiences and computed traits
that must exist, and reference cycles, spelled out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import orjson

from services.segmentation.language import (
    find_cycle,
    validate_audience,
    validate_computed_trait,
)
from services.shared.errors import FieldViolation, InvalidArgument, too_long
from services.shared.holdout import MAX_HOLDOUT_SHARE

KEY_PATTERN = re.compile(r"^[a-z0-9_]{1,255}$")
MAX_NAME_CHARS = 255  # the name columns of audiences and computed traits
# A definition's JSON text at most (docs/audiences.md, "Limits"): bounds the work of
# parsing before any other limit is checked.
MAX_DEFINITION_BYTES = 1024 * 1024


def field_path(prefix: str, path: str) -> str:
    """A language path under a request field: ``prefix.path`` (``prefix`` at the root)."""
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def reject(violations: list[FieldViolation]) -> None:
    """Raise INVALID_ARGUMENT listing every violation (nothing when there is none)."""
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        raise InvalidArgument(summary, violations)


def decode_json(payload: bytes, field: str, violations: list[FieldViolation]) -> Any:
    """The JSON value of `payload`, or None with a violation added."""
    if not payload:
        violations.append(FieldViolation(field, "is required"))
        return None
    if len(payload) > MAX_DEFINITION_BYTES:
        violations.append(
            FieldViolation(field, f"must be at most {MAX_DEFINITION_BYTES} bytes of JSON")
        )
        return None
    try:
        # orjson refuses input nested deeper than 1024 levels without recursing into
        # it, so this is bounded too; the language's own nesting limit is far lower.
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        reason = "nests too deeply" if "depth" in str(e) else "not valid JSON"
        violations.append(FieldViolation(field, reason))
        return None


def check_key(key: str, field: str, violations: list[FieldViolation]) -> None:
    """Keys are [a-z0-9_]+ (they appear in hot-state hashes and destination columns)."""
    if not KEY_PATTERN.match(key):
        violations.append(FieldViolation(field, "must match [a-z0-9_]+ (at most 255 characters)"))


def check_name(name: str, field: str, violations: list[FieldViolation]) -> None:
    """Display names fit their column."""
    violation = too_long(field, name, MAX_NAME_CHARS)
    if violation is not None:
        violations.append(violation)


def _walk(raw: Any) -> Iterator[tuple[str, str, Any]]:
    """(path, node kind, body) of every node of a raw condition tree, parents first.

    Stored definitions may predate the nesting limit, so this keeps a stack of its own
    instead of recursing.
    """
    stack: list[tuple[Any, str]] = [(raw, "")]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, Mapping) or len(node) != 1:
            continue
        kind, body = next(iter(node.items()))
        here = field_path(path, kind) if path else kind
        yield here, kind, body
        if kind in ("all", "any") and isinstance(body, list):
            stack.extend((child, f"{here}[{i}]") for i, child in reversed(list(enumerate(body))))
        elif kind == "not":
            stack.append((body, here))
        elif kind == "account" and isinstance(body, Mapping):
            stack.append((body.get("condition"), f"{here}.condition"))


def audience_violations(
    raw: Any,
    prefix: str,
    *,
    key: str | None,
    audiences: Mapping[str, Any],
    computed_keys: Collection[str],
    prediction_keys: Collection[str],
) -> list[FieldViolation]:
    """Every problem of an audience definition: the language's, then references to
    audiences, computed traits or predictions that do not exist, then a reference cycle
    (checked with `raw` substituted for `key` among the stored `audiences`, key ->
    definition)."""
    found = [FieldViolation(field_path(prefix, p), r) for p, r in validate_audience(raw)]
    if found:
        return found
    for path, kind, body in _walk(raw):
        if kind == "audience" and body["key"] not in audiences and body["key"] != key:
            found.append(
                FieldViolation(
                    field_path(prefix, f"{path}.key"),
                    f"no audience {body['key']!r} in this workspace",
                )
            )
        if kind == "computed" and body["key"] not in computed_keys:
            found.append(
                FieldViolation(
                    field_path(prefix, f"{path}.key"),
                    f"no computed trait {body['key']!r} in this workspace",
                )
            )
        if kind == "prediction" and body["key"] not in prediction_keys:
            # Refused rather than matching nobody (docs/decisions.md).
            found.append(
                FieldViolation(
                    field_path(prefix, f"{path}.key"),
                    f"no prediction {body['key']!r} in this workspace"
                    " (a prediction exists once it has scores)",
                )
            )
    found += _unknown_computed_refs(_filter_computed_refs(raw), prefix, computed_keys)
    if key is not None:
        cycle = find_cycle({**audiences, key: raw})
        if cycle:
            found.append(
                FieldViolation(
                    field_path(prefix, _ref_path(raw, cycle, key)),
                    f"audience reference cycle: {cycle}",
                )
            )
    return found


def _ref_path(raw: Any, cycle: str, key: str) -> str:
    """The path of the reference in `raw` by which `key` enters the cycle."""
    chain = cycle.split(" -> ")
    if key in chain[:-1]:
        target = chain[chain.index(key) + 1]
        for path, kind, body in _walk(raw):
            if kind == "audience" and body["key"] == target:
                return f"{path}.key"
    return ""


def _unknown_computed_refs(
    refs: Iterable[tuple[str, str]], prefix: str, computed_keys: Collection[str]
) -> list[FieldViolation]:
    return [
        FieldViolation(field_path(prefix, path), f"no computed trait {k!r} in this workspace")
        for path, k in refs
        if k not in computed_keys
    ]


def computed_violations(
    raw: Any,
    prefix: str,
    *,
    key: str | None = None,
    computed: Mapping[str, Any] | None = None,
) -> list[FieldViolation]:
    """Every problem of a computed-trait definition, under `prefix`: the language's,
    then ``ref.computed`` keys not among the stored `computed` traits (key -> raw
    definition), then a reference cycle among them with `raw` saved as `key` (None: an
    unsaved definition, which nothing can reference)."""
    found = [FieldViolation(field_path(prefix, p), r) for p, r in validate_computed_trait(raw)]
    if found or computed is None:
        return found
    refs = list(_where_computed_refs(raw.get("where"), "where"))
    known = computed.keys() | ({key} if key is not None else set())
    found = _unknown_computed_refs(refs, prefix, known)
    if found or key is None:
        return found
    cycle = find_cycle({**computed, key: raw}, computed_dependencies_raw)
    if cycle:
        chain = cycle.split(" -> ")
        target = chain[chain.index(key) + 1] if key in chain[:-1] else None
        path = next((p for p, k in refs if k == target), "")
        found.append(
            FieldViolation(field_path(prefix, path), f"computed trait reference cycle: {cycle}")
        )
    return found


def dependents(
    key: str, audiences: Mapping[str, Any], refs: Callable[[Any], Collection[str]]
) -> list[str]:
    """Keys of the audiences whose definition refers to `key` (via `refs`)."""
    return sorted(k for k, d in audiences.items() if k != key and key in refs(d))


def computed_refs_raw(raw: Any) -> set[str]:
    """Computed trait keys a raw audience definition reads (conditions and filters'
    ``ref.computed``)."""
    return _keys_of(raw, "computed") | {k for _, k in _filter_computed_refs(raw)}


def computed_dependencies_raw(raw: Any) -> set[str]:
    """Computed trait keys a raw computed-trait definition's filters compare with."""
    where = raw.get("where") if isinstance(raw, Mapping) else None
    return {k for _, k in _where_computed_refs(where, "where")}


def _where_computed_refs(where: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, key) of every ``ref.computed`` in a raw ``where`` list at `path`."""
    if not isinstance(where, list):
        return
    for i, f in enumerate(where):
        ref = f.get("ref") if isinstance(f, Mapping) else None
        if isinstance(ref, Mapping) and isinstance(ref.get("computed"), str):
            yield f"{path}[{i}].ref.computed", ref["computed"]


def _filter_computed_refs(raw: Any) -> Iterator[tuple[str, str]]:
    """(path, key) of every ``ref.computed`` in the filters of a raw audience definition:
    event conditions' and funnel steps'."""
    for path, kind, body in _walk(raw):
        if not isinstance(body, Mapping):
            continue
        if kind == "event":
            yield from _where_computed_refs(body.get("where"), f"{path}.where")
        elif kind == "funnel" and isinstance(body.get("steps"), list):
            for i, step in enumerate(body["steps"]):
                if isinstance(step, Mapping):
                    yield from _where_computed_refs(step.get("where"), f"{path}.steps[{i}].where")


def audience_refs_raw(raw: Any) -> set[str]:
    """Audience keys a raw audience definition reads."""
    return _keys_of(raw, "audience")


def prediction_refs_raw(raw: Any) -> set[str]:
    """Prediction keys a raw audience definition reads."""
    return _keys_of(raw, "prediction")


def _keys_of(raw: Any, node_kind: str) -> set[str]:
    # Tolerates malformed nodes: one corrupt stored definition must not break the
    # reference checks that deletes and previews run over the whole workspace.
    return {
        body["key"]
        for _, kind, body in _walk(raw)
        if kind == node_kind and isinstance(body, Mapping) and isinstance(body.get("key"), str)
    }


# Node kinds whose truth needs stored data (events, traits, scores, accounts): the
# profile service answers a request from the hot memberships and the context only.
_STORED_KINDS = frozenset({"event", "trait", "computed", "prediction", "funnel", "account"})


def has_context_raw(raw: Any) -> bool:
    """Whether a raw definition has a context condition itself."""
    return any(kind == "context" for _, kind, _ in _walk(raw))


def context_keys(audiences: Mapping[str, Any]) -> set[str]:
    """Keys of the context audiences among `audiences` (key -> raw definition): those
    with context conditions and those referring to one, transitively."""
    found = {k for k, d in audiences.items() if has_context_raw(d)}
    while True:
        more = {k for k, d in audiences.items() if k not in found and audience_refs_raw(d) & found}
        if not more:
            return found
        found |= more


def context_violations(
    raw: Any,
    prefix: str,
    *,
    audiences: Mapping[str, Any],
    account_level: bool,
    realtime: bool,
) -> list[FieldViolation]:
    """Why `raw` cannot be a context audience, if it is one (empty otherwise).

    A context audience has no stored members: the profile service evaluates it per
    request from the profile's stored audiences and the request. So it may combine
    context conditions and audience references with all/any/not only; batch and
    realtime evaluation, which need stored membership, never see it."""
    known = context_keys(audiences)
    refs = audience_refs_raw(raw) & known
    if not has_context_raw(raw) and not refs:
        return []
    found: list[FieldViolation] = []
    why = (
        "has context conditions"
        if has_context_raw(raw)
        else f"refers to context audience {sorted(refs)[0]!r}"
    )
    for path, kind, _ in _walk(raw):
        if kind in _STORED_KINDS:
            found.append(
                FieldViolation(
                    field_path(prefix, path),
                    f"this audience {why}, so it is evaluated per request and has no stored"
                    f" members; a {kind} condition needs stored membership: put it in a"
                    ' stored audience and refer to that with {"audience": {"key": ...}}',
                )
            )
    if account_level:
        found.append(
            FieldViolation(
                "audience.account_level",
                f"this audience {why}: context audiences are about the person being served,"
                " not accounts",
            )
        )
    if realtime:
        found.append(
            FieldViolation(
                "audience.realtime",
                f"this audience {why}: it is evaluated per request by GetProfile, so it"
                " cannot be realtime (realtime audiences keep stored members)",
            )
        )
    return found


# A goal's conversion window at most (a month): lift is about the experience's effect.
MAX_GOAL_HOURS = 24 * 31
DEFAULT_GOAL_HOURS = 168


def check_holdout_share(share: float, field: str, violations: list[FieldViolation]) -> None:
    """A holdout share lies in [0, MAX_HOLDOUT_SHARE]."""
    if not 0.0 <= share <= MAX_HOLDOUT_SHARE:  # NaN fails this too
        violations.append(FieldViolation(field, f"must be between 0 and {MAX_HOLDOUT_SHARE}"))


def parse_goal(payload: bytes, field: str, violations: list[FieldViolation]) -> Any:
    """A goal's JSON {"name", "type"?, "where"?, "within_hours"?} with defaults filled
    in; ``{}`` means "no goal" (returned as {}); None with violations when bad. Its
    name, type and filters follow the language's event conditions."""
    raw = decode_json(payload, field, violations)
    if raw is None:
        return None
    if raw == {}:
        return {}
    if not isinstance(raw, Mapping):
        violations.append(FieldViolation(field, "must be a JSON object"))
        return None
    found: list[FieldViolation] = []
    for k in raw:
        if k not in ("name", "type", "where", "within_hours"):
            found.append(FieldViolation(f"{field}.{k}", "unknown field"))
    hours = raw.get("within_hours", DEFAULT_GOAL_HOURS)
    if (
        isinstance(hours, bool)
        or not isinstance(hours, int | float)
        or not 0 < hours <= MAX_GOAL_HOURS
    ):
        found.append(
            FieldViolation(f"{field}.within_hours", f"must be a number in (0, {MAX_GOAL_HOURS}]")
        )
    event = {k: raw[k] for k in ("name", "type", "where") if k in raw}
    where = raw.get("where")
    for i, f in enumerate(where if isinstance(where, list) else []):
        if isinstance(f, Mapping) and "ref" in f:
            # A conversion is judged on the event alone, not on the profile's state.
            found.append(FieldViolation(f"{field}.where[{i}].ref", "goals compare with values"))
    for path, reason in validate_audience({"event": event}):
        found.append(
            FieldViolation(field_path(field, path.removeprefix("event").lstrip(".")), reason)
        )
    violations.extend(found)
    if found:
        return None
    return {
        "name": raw["name"],
        "type": raw.get("type", "track"),
        "where": raw.get("where", []),
        "within_hours": hours,
    }
