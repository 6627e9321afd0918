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
    fields = {name: getattr(message, name) for name in STRING_ATTRIBUTES}
    if message.HasField("at"):
        now_us = message.at.seconds * 1_000_000 + message.at.nanos // 1000
    violations: list[tuple[str, str]] = []
    custom: Any = None
    if message.custom:
        if len(message.custom) > MAX_CUSTOM_BYTES:
            violations.append((f"{field_prefix}.custom", f"at most {MAX_CUSTOM_BYTES} bytes"))
        else:
            try:
                custom = orjson.loads(message.custom)
            except orjson.JSONDecodeError:
                violations.append((f"{field_prefix}.custom", "not valid JSON"))
    context, problems = build_context(fields, custom, now_us, field_prefix)
    raise_problems([*violations, *problems])
    return context


def raise_problems(problems: list[tuple[str, str]]) -> None:
    """INVALID_ARGUMENT listing `problems` ((field, reason) pairs), if any."""
    if problems:
        violations = [FieldViolation(f, r) for f, r in problems]
        summary = "; ".join(f"{f}: {r}" for f, r in problems[:5])
        raise InvalidArgument(summary, violations)
