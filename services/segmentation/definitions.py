"""Checking definitions that arrive through the API, with violations named by the
request field they sit in (e.g. ``audience.definition.all[1].event.count.op``).

The language itself (language.py) knows nothing of requests or of other audiences;
this module adds what needs the workspace: references to audiences and computed traits
that must exist, and reference cycles, spelled out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import orjson

from services.segmentation.language import (
    find_cycle,
    validate_audience,
    validate_computed_trait,
)
from services.shared.errors import FieldViolation, InvalidArgument, too_long

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


def computed_violations(raw: Any, prefix: str) -> list[FieldViolation]:
    """Every problem of a computed-trait definition, under `prefix`."""
    return [FieldViolation(field_path(prefix, p), r) for p, r in validate_computed_trait(raw)]


def dependents(
    key: str, audiences: Mapping[str, Any], refs: Callable[[Any], Collection[str]]
) -> list[str]:
    """Keys of the audiences whose definition refers to `key` (via `refs`)."""
    return sorted(k for k, d in audiences.items() if k != key and key in refs(d))


def computed_refs_raw(raw: Any) -> set[str]:
    """Computed trait keys a raw audience definition reads."""
    return _keys_of(raw, "computed")


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
