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
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        violations.append(FieldViolation(field, "not valid JSON"))
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


def _walk(raw: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, node kind, body) of every node of a raw (already valid) condition tree."""
    if not isinstance(raw, Mapping) or len(raw) != 1:
        return
    kind, body = next(iter(raw.items()))
    here = field_path(path, kind) if path else kind
    yield here, kind, body
    if kind in ("all", "any") and isinstance(body, list):
        for i, child in enumerate(body):
            yield from _walk(child, f"{here}[{i}]")
    elif kind == "not":
        yield from _walk(body, here)
    elif kind == "account" and isinstance(body, Mapping):
        yield from _walk(body.get("condition"), f"{here}.condition")


def audience_violations(
    raw: Any,
    prefix: str,
    *,
    key: str | None,
    audiences: Mapping[str, Any],
    computed_keys: Collection[str],
) -> list[FieldViolation]:
    """Every problem of an audience definition: the language's, then references to
    audiences or computed traits that do not exist, then a reference cycle (checked
    with `raw` substituted for `key` among the stored `audiences`, key -> definition)."""
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
    """Computed trait keys a raw (valid) audience definition reads."""
    return {body["key"] for _, kind, body in _walk(raw) if kind == "computed"}


def audience_refs_raw(raw: Any) -> set[str]:
    """Audience keys a raw (valid) audience definition reads."""
    return {body["key"] for _, kind, body in _walk(raw) if kind == "audience"}
