"""audiences.v1.RequestContext -> a request context (services/shared/request_context.py),
for every servicer that takes one (GetProfile, the HTTP view, ExplainMembership)."""

from __future__ import annotations

from typing import Any

import orjson
from audiences.v1 import common_pb2

from services.shared.errors import FieldViolation, InvalidArgument
from services.shared.request_context import STRING_ATTRIBUTES, build_context

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
    fields = {name: getattr(message, name) for name in STRING_ATTRIBUTES}
    at_us = None
    if message.HasField("at"):
        at_us = message.at.seconds * 1_000_000 + message.at.nanos // 1000
    custom: Any = None
    if message.custom:
        path = f"{field_prefix}.custom"
        if len(message.custom) > MAX_CUSTOM_BYTES:
            raise_problems([(path, f"must be at most {MAX_CUSTOM_BYTES} bytes")])
        try:
            custom = orjson.loads(message.custom)
        except orjson.JSONDecodeError:
            raise_problems([(path, "not valid JSON")])
    return fields, custom, at_us


def raise_problems(problems: list[tuple[str, str]]) -> None:
    """INVALID_ARGUMENT listing `problems` ((field, reason) pairs), if any."""
    if problems:
        violations = [FieldViolation(f, r) for f, r in problems]
        summary = "; ".join(f"{f}: {r}" for f, r in problems[:5])
        raise InvalidArgument(summary, violations)
