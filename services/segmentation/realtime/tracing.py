"""The realtime worker's spans and timings: one span per workspace batch evaluation
(its duration is the evaluation latency metric, services/shared/metrics.py), continuing the
trace of the event that touched the profiles (carried in the stream entry), and one per
membership change under it, whose context the change carries on (stream:changes and
services/shared/change_traces.py) to the syncs that deliver it.

With tracing off this adds nothing: each change carries its event's trace context,
exactly as the entry brought it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace

from services.segmentation.model import Change
from services.shared import metrics, telemetry
from services.shared.streams import trace_fields

_tracer = trace.get_tracer(__name__)


@contextmanager
def evaluation(
    workspace_id: str, traces: Mapping[int, dict[str, str]]
) -> Iterator[trace.Span | None]:
    """The span of evaluating a workspace's touched profiles: a child of the first
    traced event among them, linked to the other events' traces; None when off."""
    started = time.perf_counter()
    try:
        with telemetry.continued_span(
            _tracer,
            "segmentation.realtime.evaluate",
            traces.values(),
            {"audiences.workspace_id": workspace_id, "audiences.profiles": len(traces)},
        ) as span:
            yield span
    finally:
        metrics.REALTIME_EVALUATION.observe(time.perf_counter() - started)


def change_fields(
    evaluation_span: trace.Span | None, change: Change, event: dict[str, str]
) -> dict[str, str]:
    """The trace fields a change carries on: with tracing off its event's (`event`);
    else those of a span for the change, a child of the evaluation when the event is of
    the evaluation's trace, else of its own event (linked to the evaluation)."""
    if evaluation_span is None:
        return event
    own = propagate.extract(event) if event else None
    own_context = trace.get_current_span(own).get_span_context() if own else None
    evaluated = evaluation_span.get_span_context()
    links: list[trace.Link] = []
    if own is None or own_context is None or not own_context.is_valid:
        parent = trace.set_span_in_context(evaluation_span)
    elif own_context.trace_id == evaluated.trace_id:
        parent = trace.set_span_in_context(evaluation_span)
    else:
        parent, links = own, [trace.Link(evaluated)]
    with _tracer.start_as_current_span(
        "segmentation.membership_change",
        context=parent,
        links=links,
        attributes={
            "audiences.change": change.kind,
            "audiences.audience_key": change.audience_key,
            "audiences.profile_id": change.profile_id,
            "audiences.seq": change.seq,
        },
    ):
        return trace_fields()
