"""Braze destinations: audience membership written as a user attribute through
Braze's ``POST /users/track`` (``Authorization: Bearer <REST API key>``), at most 75
attribute objects a request.

The person is named by the sync's id type: ``user_id`` as ``external_id``, ``email``
as ``email``, any other type (``anonymous_id``, ``device_id``, a custom one) as a user
alias whose label is the type. Audience syncs only update users Braze already has
(``_update_existing_only``).

Options: ``membership`` = ``boolean`` (default: attribute ``audience_<key>`` set to
true on entering, false on leaving) or ``array`` (the audience key added to or removed
from the array attribute ``audiences``); ``attribute`` overrides the attribute's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from services.shared.errors import FieldViolation
from services.sync.destinations.base import (
    AcknowledgedPerBatch,
    Batch,
    DestinationRun,
    Outcome,
    RunContext,
    any_id_type,
)
from services.sync.model import ADDED, AUDIENCE, EVENTS, Change, Destination, ForwardedEvent

MAX_OBJECTS = 75
OPTIONS = {"membership", "attribute"}
ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _identify(change: Change | ForwardedEvent, id_type: str) -> dict[str, Any]:
    if id_type == "user_id":
        return {"external_id": change.id}
    if id_type == "email":
        return {"email": change.id}
    return {"user_alias": {"alias_name": change.id, "alias_label": id_type}}


def event_objects(batch: Batch) -> list[dict[str, Any]]:
    """The Braze event objects of an event sync's batch, one per event, in order: a
    track event's name, or the page or screen name, or the event type."""
    return [
        {
            **_identify(e, batch.id_type),
            "name": e.name or e.type,
            "time": datetime.fromtimestamp(e.timestamp_us / 1e6, UTC).isoformat(),
            "properties": e.properties if isinstance(e.properties, dict) else {},
        }
        for e in batch.events
    ]


def attribute_objects(batch: Batch, options: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Braze attribute objects of a batch, one per change, in order."""
    if batch.source != AUDIENCE:
        # A computed trait or prediction is a custom attribute of that name; such a
        # sync creates the users Braze does not have yet.
        attribute = options.get("attribute") or batch.audience_key
        return [
            {
                **_identify(change, batch.id_type),
                attribute: change.value,
                "_update_existing_only": False,
            }
            for change in batch.changes
        ]
    array = options.get("membership") == "array"
    name = options.get("attribute") or ("audiences" if array else f"audience_{batch.audience_key}")
    out = []
    for change in batch.changes:
        entered = change.action == ADDED
        value: Any = {"add" if entered else "remove": [batch.audience_key]} if array else entered
        out.append({**_identify(change, batch.id_type), name: value, "_update_existing_only": True})
    return out


class _BrazeRun(AcknowledgedPerBatch):
    def __init__(self, destination: Destination, context: RunContext) -> None:
        super().__init__(destination, context)
        self._url = destination.base_url.rstrip("/") + "/users/track"

    async def deliver(self, batch: Batch) -> Outcome:
        field = "events" if batch.source == EVENTS else "attributes"
        objects = (
            event_objects(batch)
            if batch.source == EVENTS
            else attribute_objects(batch, self._destination.options)
        )
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self._destination.secret or ''}",
        }
        retries = 0
        for start in range(0, len(objects), MAX_OBJECTS):
            body = orjson.dumps({field: objects[start : start + MAX_OBJECTS]})
            answer = await self._post(self._url, body, headers)
            retries += answer.retries
            if not answer.accepted:
                return Outcome(retries, answer.status, answer.body)
        return Outcome(retries=retries)


class BrazeType:
    """Opens Braze runs and checks Braze options."""

    check_id_type = staticmethod(any_id_type)

    def check_options(self, options: Mapping[str, str]) -> list[FieldViolation]:
        """membership must be boolean or array; attribute a Braze attribute name."""
        problems = [
            FieldViolation(f"destination.options[{key}]", "is not an option of Braze")
            for key in options
            if key not in OPTIONS
        ]
        if options.get("membership", "boolean") not in ("boolean", "array"):
            problems.append(
                FieldViolation("destination.options[membership]", "must be boolean or array")
            )
        if "attribute" in options and not ATTRIBUTE.match(options["attribute"]):
            problems.append(
                FieldViolation(
                    "destination.options[attribute]",
                    "must be letters, digits and underscores, at most 64",
                )
            )
        return problems

    def open_run(self, destination: Destination, context: RunContext) -> DestinationRun:
        """A run writing membership attributes through /users/track."""
        return _BrazeRun(destination, context)


TYPE = BrazeType()
