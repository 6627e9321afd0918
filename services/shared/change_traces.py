"""The trace context of each membership change, for whoever acts on the change later.

The realtime worker (segmentation) records a change in the change log, which syncs
read from Postgres; the log has no trace context. So while tracing records, the worker
also leaves each change's W3C `traceparent` under a short-lived Redis key, and a sync
delivering the change continues that trace (its delivery span is a child of the
change's span). A read model between segmentation and sync: neither imports the other.
Keys expire after a day: a sync that runs later starts a trace of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.shared import telemetry
from services.shared.redis import is_cluster

TTL_SECONDS = 86_400


def key(workspace_id: str, seq: int) -> str:
    """The Redis key holding the traceparent of the workspace's change `seq`."""
    return f"trace:change:{workspace_id}:{seq}"


def remember(pipe: Any, workspace_id: str, seq: int, fields: Mapping[Any, Any]) -> None:
    """Queue on `pipe` (a Redis pipeline) the change's traceparent from its stream
    `fields`, when tracing records and the trace is sampled (nothing otherwise)."""
    traceparent = fields.get("traceparent")
    if not telemetry.tracing_enabled() or not isinstance(traceparent, str):
        return
    # version-trace-span-flags; bit 0 of the flags: sampled (else nobody sees the trace).
    try:
        sampled = int(traceparent.rsplit("-", 1)[-1], 16) & 1
    except ValueError:
        return
    if not sampled:
        return
    pipe.set(key(workspace_id, seq), traceparent, ex=TTL_SECONDS)


async def recall(
    redis: Redis, workspace_id: str, seqs: Sequence[int]
) -> tuple[otel_context.Context | None, list[trace.Link]]:
    """The context to parent a span acting on these changes (the first traced one's)
    and links to the other traces among them; (None, []) when none is known or tracing
    is off."""
    if not seqs or not telemetry.tracing_enabled():
        return None, []
    keys = [key(workspace_id, seq) for seq in seqs]
    if is_cluster(redis):  # the keys hash to several slots: read them slot by slot
        values = await cast("RedisCluster", redis).mget_nonatomic(keys)
    else:
        values = await redis.mget(keys)
    parent: otel_context.Context | None = None
    parent_trace = 0
    links: list[trace.Link] = []
    seen: set[int] = set()
    for value in values:
        if value is None:
            continue
        text = value.decode() if isinstance(value, bytes) else value
        carried = propagate.extract({"traceparent": text})
        span_context = trace.get_current_span(carried).get_span_context()
        if not span_context.is_valid or span_context.trace_id in seen:
            continue
        seen.add(span_context.trace_id)
        if parent is None:
            parent, parent_trace = carried, span_context.trace_id
        elif span_context.trace_id != parent_trace:
            links.append(trace.Link(span_context))
    return parent, links
