"""The Segment-compatible HTTP gateway: POST /v1/batch, /v1/track, /v1/identify,
/v1/page, /v1/screen, /v1/group, /v1/alias, with the write key as the HTTP basic-auth
user. It translates HTTP to the same Ingestor the gRPC servicer uses and answers 200
once the events are committed (Segment clients retry anything else).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from opentelemetry import propagate, trace

from services.ingest.ingestor import Ingestor
from services.ingest.model import BatchOutcome, Status
from services.ingest.segment import from_segment
from services.ingest.validation import MAX_BATCH_BYTES, check_request_size
from services.shared.auth import KeyStore, check_scope, http_secret
from services.shared.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_HTTP_STATUS = {
    Unauthenticated: 401,
    PermissionDenied: 403,
    ResourceExhausted: 413,
    InvalidArgument: 400,
}
SINGLE_TYPES = ("track", "identify", "page", "screen", "group", "alias")


def _body(request: web.Request, raw: bytes) -> object:
    # aiohttp may already have inflated the body; only gunzip what still is gzip.
    if request.headers.get("Content-Encoding", "").lower() == "gzip" and raw[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, MAX_BATCH_BYTES + 1)
        except zlib.error:
            raise InvalidArgument("body: not valid gzip") from None
    if len(raw) > MAX_BATCH_BYTES:
        check_request_size(0, len(raw))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidArgument("body: not valid JSON") from None


def _reply(outcome: BatchOutcome) -> web.Response:
    rejected = [
        {"index": v.index, "field": v.field, "reason": v.reason}
        for o in outcome.outcomes
        if o.status is Status.REJECTED
        for v in o.violations
    ]
    body = {
        "success": True,
        "accepted": outcome.count(Status.ACCEPTED),
        "duplicates": outcome.count(Status.DUPLICATE),
        "rejected": rejected,
    }
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


def build_app(ingestor: Ingestor, keys: KeyStore) -> web.Application:
    """The aiohttp application of the gateway."""

    async def handle(request: web.Request, event_type: str | None) -> web.Response:
        raw = await request.read()
        body = _body(request, raw)
        if not isinstance(body, dict):
            raise InvalidArgument("body: must be a JSON object")
        secret = http_secret(request.headers.get("Authorization")) or (
            body.get("writeKey") if isinstance(body.get("writeKey"), str) else None
        )
        principal = await keys.authenticate(secret)
        check_scope(principal, "ingest:write")
        if event_type is None:
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise InvalidArgument("batch: must be a list of events")
            check_request_size(len(messages), len(raw))
            raws = [from_segment(m, None, body.get("context")) for m in messages]
        else:
            raws = [from_segment(body, event_type)]
        return _reply(await ingestor.ingest(principal.workspace_id, raws))

    def route(event_type: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            name = f"POST {request.path}"
            parent = propagate.extract(dict(request.headers))
            with _tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER):
                try:
                    return await handle(request, event_type)
                except ServiceError as error:
                    status = next(
                        (code for kind, code in _HTTP_STATUS.items() if isinstance(error, kind)),
                        500,
                    )
                    return web.json_response(
                        {"success": False, "error": error.message}, status=status
                    )

        return handler

    app = web.Application(client_max_size=MAX_BATCH_BYTES + 1024)
    app.router.add_post("/v1/batch", route(None))
    for event_type in SINGLE_TYPES:
        app.router.add_post(f"/v1/{event_type}", route(event_type))
    return app


class Gateway:
    """The gateway's HTTP server: start on a port (0 picks one), stop gracefully."""

    def __init__(
        self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Serve `app` on host:port, over TLS when `ssl_context` is given."""
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, reuse_port=True, ssl_context=self._ssl_context
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("ingest HTTP gateway serving on %s:%d", self._host, self.port)
        return self.port

    async def stop(self) -> None:
        """Finish in-flight requests (their events are committed before the reply)."""
        await self._runner.cleanup()

    async def serve_forever(self) -> None:
        """Run until cancelled (the ServiceSpec worker), then stop."""
        try:
            await self.start()
        except OSError:
            log.exception("ingest HTTP gateway could not bind %s:%d", self._host, self._port)
            return
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
