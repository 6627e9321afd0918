"""When can a profile's answers change with no new event? (pure)

Every condition over events reads, at evaluation time ``now``, the events with
``t <= now`` inside a window: ``within_days D`` is ``now - D < t <= now``,
``between_days [A, B]`` is ``now - B < t <= now - A`` (design.md section 6). So with
the events fixed, an event of timestamp ``t`` can only change an answer at the instants
``t`` (a future-dated event comes into view), ``t + A`` (enters a between window) and
``t + B`` / ``t + D`` (leaves a window). Funnels read the same way (their steps come
into view at ``t``, the first step leaves its window at ``t + D``); ``within_seconds``
only relates event timestamps to each other, so it never flips an answer by itself.

``boundary_offsets`` lists, per (type, name) of the events the realtime definitions
read, the offsets (microseconds) to add to an event's timestamp to get those instants;
the earliest such instant after ``now`` is the profile's next due time. It ignores the
conditions' property filters: a wake-up that changes nothing costs one re-evaluation,
a missed one would be wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.segmentation.language import (
    ComputedTraitDef,
    Event,
    Funnel,
    Node,
    Window,
    iter_nodes,
)

EventKind = tuple[str, str]  # (type, name)


def _window_offsets(window: Window | None) -> set[int]:
    """The offsets at which an event enters and leaves `window` (0 always: it comes
    into view at its own timestamp)."""
    if window is None:
        return {0}
    lower, upper = window.bounds(0)  # (-far edge, -near edge)
    return {0, -lower, -upper}


def boundary_offsets(
    audiences: Iterable[Node], computed: Iterable[ComputedTraitDef]
) -> dict[EventKind, set[int]]:
    """(type, name) -> the offsets from an event's timestamp at which the given
    definitions' answers may change with no new event."""
    out: dict[EventKind, set[int]] = {}

    def add(kind: EventKind, window: Window | None) -> None:
        out.setdefault(kind, set()).update(_window_offsets(window))

    for root in audiences:
        for node in iter_nodes(root):
            if isinstance(node, Event):
                add((node.type, node.name), node.window)
            elif isinstance(node, Funnel):
                for i, step in enumerate(node.steps):
                    add((step.type, step.name), node.window if i == 0 else None)
    for trait in computed:
        add((trait.event_type, trait.event), trait.window)
    return out
