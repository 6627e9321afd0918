"""Webhook destinations: each batch is one POST of JSON to the destination's URL.

Headers: ``Idempotency-Key`` (the same for every attempt and every re-run of the same
changes, so a receiver that saw it can drop the repeat), ``X-Audiences-Timestamp``
(Unix seconds of the attempt) and ``X-Audiences-Signature``:
``sha256=<hex HMAC-SHA256 of "<timestamp>." + body, keyed with the secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson
from opentelemetry import propagate

from services.sync.destinations.base import (
    AcknowledgedPerBatch,
    Batch,
    DestinationRun,
    Outcome,
    RunContext,
    any_id_type,
    no_options,
)
from services.sync.model import Destination

SIGNATURE_HEADER = "X-Audiences-Signature"
TIMESTAMP_HEADER = "X-Audiences-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value of a body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """True when `header` is the signature of `body` at `timestamp` (constant time)."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


class _WebhookRun(AcknowledgedPerBatch):
    async def deliver(self, batch: Batch) -> Outcome:
        body = orjson.dumps(batch.as_json())
        secret = self._destination.secret or ""

        def headers() -> dict[str, str]:
            now = str(int(time.time()))
            sent = {
                "Content-Type": "application/json",
                IDEMPOTENCY_HEADER: batch.idempotency_key,
                TIMESTAMP_HEADER: now,
                SIGNATURE_HEADER: signature(secret, now, body),
            }
            propagate.inject(sent)  # W3C traceparent: the receiver may continue the trace
            return sent

        answer = await self._post(self._destination.base_url, body, headers)
        if answer.accepted:
            return Outcome(retries=answer.retries)
        return Outcome(answer.retries, answer.status, answer.body)


class WebhookType:
    check_options = staticmethod(no_options)
    check_id_type = staticmethod(any_id_type)
    """Opens webhook runs."""

    def open_run(self, destination: Destination, context: RunContext) -> DestinationRun:
        """A run POSTing signed JSON batches to the destination's URL."""
        return _WebhookRun(destination, context)


TYPE = WebhookType()
