"""audiences.v1.RequestContext -> a request context (services/shared/request_context.py),
for every servicer that takes one (GetProfile, the HTTP view, ExplainMembership)."""

from __future__ import annotations

from typing import Any

import orjson
from audiences.v1 import common_pb2

from services.shared.errors import FieldViolation, InvalidArgument
from services.shared.request_context import build_context

# Larger custom JSON than this is not a request context (50 keys of 2 KiB fit).
MAX_CUSTOM_BYTES = 128 * 1024


def context_from_message(
    message: common_pb2.RequestContext, now_us: int, field_prefix: str = "context"
) -> dict[str, Any]:
    """The context of `message` (its `at`, else `now_us`, dates local_hour/weekday);
    INVALID_ARGUMENT with a violation per bad field."""
    fields, custom, at_us = context_inputs(message, field_prefix)
    context, problems = build_context(
        fields, custom, now_us if at_us is None else at_us, field_prefix
    )
    raise_problems(problems)
    return context


def context_inputs(
    message: common_pb2.RequestContext, field_prefix: str = "context"
) -> tuple[dict[str, Any], Any, int | None]:
    """(named attributes, decoded custom JSON, `at` in microseconds or None) of a
    message, for build_context; INVALID_ARGUMENT if `custom` is not JSON."""
    # ListFields: only the fields set, in one call (this is on GetProfile's path).
    fields: dict[str, Any] = {d.name: v for d, v in message.ListFields()}
    at_us = None
    at = fields.pop("at", None)
    if at is not None:
        at_us = at.seconds * 1_000_000 + at.nanos // 1000
    custom: Any = None
    raw_custom = fields.pop("custom", b"")
    if raw_custom:
        path = f"{field_prefix}.custom"
        if len(raw_custom) > MAX_CUSTOM_BYTES:
            raise_problems([(path, f"must be at most {MAX_CUSTOM_BYTES} bytes")])
        try:
            custom = orjson.loads(raw_custom)
        except orjson.JSONDecodeError:
            raise_problems([(path, "not valid JSON")])
    return fields, custom, at_us


def raise_problems(problems: list[tuple[str, str]]) -> None:
    """INVALID_ARGUMENT listing `problems` ((field, reason) pairs), if any."""
    if problems:
        violations = [FieldViolation(f, r) for f, r in problems]
        summary = "; ".join(f"{f}: {r}" for f, r in problems[:5])
        raise InvalidArgument(summary, violations)
