"""Amplitude destinations: audience membership as an Amplitude cohort, through the
Behavioral Cohorts API with the project's API key and secret key as basic auth.

The first batch creates the cohort (``POST /api/3/cohorts/upload``: named after the
audience unless ``cohort_name`` is set, owned by ``owner`` in app ``app_id``,
published) and its id is kept with the sync at once; every later batch adds entering
and removes exiting users (``POST /api/3/cohorts/membership``), in order. Users are
matched by user id (sync id type ``user_id``) or Amplitude id (``amplitude_id``).

Options: ``api_key``, ``app_id``, ``owner`` (required), ``region`` (``us``, the default,
or ``eu``: the API host when ``base_url`` is empty), ``cohort_name``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

import orjson

from services.shared.errors import FieldViolation
from services.sync.delivery import DeliveryFailed, HttpAnswer
from services.sync.destinations.base import (
    AcknowledgedPerBatch,
    Batch,
    DestinationRun,
    Outcome,
    RunContext,
)
from services.sync.model import ADDED, EVENTS, Destination

HOSTS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
OPTIONS = {"api_key", "app_id", "owner", "region", "cohort_name"}
REQUIRED = ("api_key", "app_id", "owner")
# The sync's id type -> (id_type of an upload, id_type of a membership change).
ID_TYPES = {"user_id": ("BY_USER_ID", "BY_NAME"), "amplitude_id": ("BY_AMP_ID", "BY_ID")}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def memberships(batch: Batch) -> list[dict[str, Any]]:
    """The batch as membership operations: runs of consecutive adds or removes, in
    order, so a user who leaves and comes back ends as a member."""
    by = ID_TYPES[batch.id_type][1]
    out: list[dict[str, Any]] = []
    for change in batch.changes:
        operation = "ADD" if change.action == ADDED else "REMOVE"
        if not out or out[-1]["operation"] != operation:
            out.append({"ids": [], "id_type": by, "operation": operation})
        out[-1]["ids"].append(change.id)
    return out


class _AmplitudeRun(AcknowledgedPerBatch):
    def __init__(self, destination: Destination, context: RunContext) -> None:
        super().__init__(destination, context)
        options = destination.options
        self._options = options
        host = destination.base_url or HOSTS[options.get("region", "us")]
        self._host = host.rstrip("/")
        self._cohort_id = (context.state or {}).get("cohort_id")
        pair = f"{options.get('api_key', '')}:{destination.secret or ''}".encode()
        self._authorization = "Basic " + base64.b64encode(pair).decode()

    async def _call(self, path: str, document: Any) -> HttpAnswer:
        headers = {"Content-Type": "application/json", "Authorization": self._authorization}
        return await self._post(self._host + path, orjson.dumps(document), headers)

    async def _events(self, batch: Batch) -> Outcome:
        """An event sync's batch through the HTTP V2 API (``/2/httpapi``), the API key
        in the body; the message id is the insert id Amplitude deduplicates on."""
        who = "user_id" if batch.id_type == "user_id" else "device_id"
        document = {
            "api_key": self._options.get("api_key", ""),
            "events": [
                {
                    who: e.id,
                    "event_type": e.name or e.type,
                    "time": e.timestamp_us // 1000,
                    "insert_id": e.message_id,
                    "event_properties": e.properties if isinstance(e.properties, dict) else {},
                }
                for e in batch.events
            ],
        }
        headers = {"Content-Type": "application/json"}
        answer = await self._post(self._host + "/2/httpapi", orjson.dumps(document), headers)
        if answer.accepted:
            return Outcome(retries=answer.retries)
        return Outcome(answer.retries, answer.status, answer.body)

    async def deliver(self, batch: Batch) -> Outcome:
        if batch.source == EVENTS:
            return await self._events(batch)
        if batch.id_type not in ID_TYPES:
            raise DeliveryFailed(
                f"Amplitude matches users by user_id or amplitude_id, not {batch.id_type}"
            )
        retries = 0
        changes = list(batch.changes)
        if self._cohort_id is None:
            # A new cohort starts with the members entering before anyone leaves.
            first_removal = next(
                (i for i, c in enumerate(changes) if c.action != ADDED), len(changes)
            )
            upload = {
                "name": self._options.get("cohort_name") or batch.audience_key,
                "app_id": int(self._options["app_id"]),
                "id_type": ID_TYPES[batch.id_type][0],
                "ids": [c.id for c in changes[:first_removal]],
                "owner": self._options["owner"],
                "published": True,
            }
            answer = await self._call("/api/3/cohorts/upload", upload)
            retries += answer.retries
            if not answer.accepted:
                return Outcome(retries, answer.status, answer.body)
            try:
                self._cohort_id = str(orjson.loads(answer.body)["cohortId"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                raise DeliveryFailed(
                    "Amplitude answered a cohort upload without cohortId"
                ) from error
            if self._context.save_state is not None:
                await self._context.save_state({"cohort_id": self._cohort_id})
            changes = changes[first_removal:]
        if changes:
            rest = Batch(
                batch.sync_id, batch.audience_key, batch.id_type, batch.idempotency_key, changes
            )
            answer = await self._call(
                "/api/3/cohorts/membership",
                {
                    "cohort_id": self._cohort_id,
                    "memberships": memberships(rest),
                    "skip_invalid_ids": True,
                },
            )
            retries += answer.retries
            if not answer.accepted:
                return Outcome(retries, answer.status, answer.body)
        return Outcome(retries=retries)


class AmplitudeType:
    """Opens Amplitude runs and checks Amplitude options."""

    def check_options(self, options: Mapping[str, str]) -> list[FieldViolation]:
        """api_key, app_id (a number) and owner (an email) are required; region us or eu."""
        problems = [
            FieldViolation(f"destination.options[{key}]", "is not an option of Amplitude")
            for key in options
            if key not in OPTIONS
        ]
        problems += [
            FieldViolation(f"destination.options[{key}]", "is required")
            for key in REQUIRED
            if not options.get(key)
        ]
        if options.get("app_id") and not options["app_id"].isdigit():
            problems.append(FieldViolation("destination.options[app_id]", "must be a number"))
        if options.get("owner") and not EMAIL.match(options["owner"]):
            problems.append(FieldViolation("destination.options[owner]", "must be an email"))
        if options.get("region", "us") not in HOSTS:
            problems.append(FieldViolation("destination.options[region]", "must be us or eu"))
        return problems

    def check_id_type(self, id_type: str) -> str | None:
        """Amplitude matches users by user id or Amplitude id only."""
        if id_type in ID_TYPES:
            return None
        return "Amplitude cohorts match users by user_id or amplitude_id"

    def open_run(self, destination: Destination, context: RunContext) -> DestinationRun:
        """A run adding and removing the cohort's members."""
        return _AmplitudeRun(destination, context)


TYPE = AmplitudeType()
