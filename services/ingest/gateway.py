"""The Segment-compatible HTTP gateway: POST /v1/batch, /v1/import, /v1/track,
/v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias, with the write key as the
HTTP basic-auth user (or the body's ``writeKey``, as browser SDKs send it). It
translates HTTP to the same Ingestor the gRPC servicer uses and answers 200 once the
events are committed (Segment clients retry anything else).

Hostile input costs bounded work and never blocks the event loop for long: the
Authorization header is checked before the body is read; the body is read with a cap
(a declared or actual size over it is refused unread); a compressed body is inflated
in a worker thread, stopping at the same cap; aiohttp's own inflation (unbounded, on
the event loop) is turned off. Every rejection is a 4xx with a JSON ``error`` that
speaks of the request's headers and body.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterable

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import propagate, trace

from services.ingest.ingestor import Ingestor
from services.ingest.model import BatchOutcome, Status
from services.ingest.segment import from_segment
from services.ingest.validation import MAX_BATCH_BYTES, check_request_size
from services.shared.auth import KeyStore, Principal, authenticate_http, check_scope
from services.shared.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from services.shared.http import unexpected_errors

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_HTTP_STATUS = {
    Unauthenticated: 401,
    PermissionDenied: 403,
    ResourceExhausted: 413,
    InvalidArgument: 400,
    Unavailable: 503,
}
SINGLE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
# Segment's import path takes the same body as /v1/batch.
BATCH_PATHS = ("/v1/batch", "/v1/import")
# A body as sent and once inflated: the same cap as a gRPC Batch.
MAX_BODY_BYTES = MAX_BATCH_BYTES
# zlib window bits per Content-Encoding; None: the body is sent as it is.
_ENCODINGS: dict[str, int | None] = {
    "": None,
    "identity": None,
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}
# text/plain: browser SDKs send JSON as text/plain so no CORS preflight is needed;
# application/octet-stream: what generic HTTP clients label bytes with.
_JSON_TYPES = frozenset({"application/json", "text/plain", "application/octet-stream"})
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, AnonymousId"
CORS_MAX_AGE_SECONDS = 86_400


class HttpError(Exception):
    """A request refused with an HTTP status and a message about the request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _too_large(what: str) -> HttpError:
    return HttpError(413, f"{what}; the limit is {MAX_BODY_BYTES // (1024 * 1024)} MiB")


def _status(error: ServiceError) -> int:
    return next((code for kind, code in _HTTP_STATUS.items() if isinstance(error, kind)), 500)


def _json_response(body: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """The gateway's error answer: ``{"success": false, "error": message}``."""
    response = _json_response({"success": False, "error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="audiences"'
    return response


def check_headers(request: web.Request) -> int | None:
    """The zlib window bits for the body's Content-Encoding (None: not compressed).

    HttpError 415 for a Content-Type that is not JSON or an encoding not supported.
    """
    if "Content-Type" in request.headers:
        mime = request.content_type
        if mime not in _JSON_TYPES and not mime.endswith("+json"):
            raise HttpError(415, f"Content-Type {mime!r}: send application/json or text/plain")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _ENCODINGS:
        raise HttpError(415, f"Content-Encoding {encoding!r}: send gzip, deflate or none")
    return _ENCODINGS[encoding]


async def read_body(request: web.Request) -> bytes:
    """The body as sent, at most MAX_BODY_BYTES (HttpError 413 past it, read no further)."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise _too_large(f"request body of {declared} bytes (Content-Length) is too large")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large("request body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def inflate(raw: bytes, wbits: int) -> bytes:
    """`raw` inflated (gzip members one after another, or one deflate stream).

    Stops as soon as the output passes MAX_BODY_BYTES (HttpError 413), so a small body
    that inflates to gigabytes costs no more than the cap; HttpError 400 when `raw` is
    not what its Content-Encoding says. Blocking: run it in a worker thread.
    """
    name = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
    parts: list[bytes] = []
    budget = MAX_BODY_BYTES + 1
    rest = raw
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, budget)
        except zlib.error:
            raise HttpError(
                400, f"request body is not valid {name} (Content-Encoding: {name})"
            ) from None
        budget -= len(part)
        if budget <= 0:
            raise _too_large("request body inflates past the limit")
        if not inflater.eof:
            raise HttpError(400, f"request body is truncated {name} (Content-Encoding: {name})")
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)


def parse_json_object(text: bytes) -> dict[str, object]:
    """The body as a JSON object; HttpError 400 saying what is wrong with it."""
    if not text:
        raise HttpError(400, "request body is empty: send a JSON object")
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise HttpError(
            400, f"request body is not valid JSON: {error.msg} at byte {error.pos}"
        ) from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


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
    return _json_response(body, 200)


async def _body_principal(keys: KeyStore, body: dict[str, object]) -> Principal:
    """The principal of a body's ``writeKey`` (requests without an Authorization header)."""
    write_key = body.get("writeKey")
    if not isinstance(write_key, str) or not write_key:
        raise Unauthenticated(
            "missing write key: send it as the basic-auth user name (Authorization header) "
            "or as the body's writeKey"
        )
    return await keys.authenticate(write_key)


def cors_middleware(origins: Iterable[str]) -> Middleware:
    """Access-Control-Allow-Origin on every answer to an allowed Origin (`*`: any)."""
    allowed = frozenset(origins)
    any_origin = "*" in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        origin = request.headers.get("Origin")
        if origin is None:
            return response
        if any_origin:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors


@web.middleware
async def _http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method) as JSON errors too."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 404:
            message = f"no such path: {request.path}"
        elif error.status == 405:
            message = f"method {request.method} not allowed on {request.path}: use POST"
        else:
            message = error.reason
        response = error_response(error.status, message)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response


def build_app(
    ingestor: Ingestor, keys: KeyStore, cors_origins: Iterable[str] = ("*",)
) -> web.Application:
    """The aiohttp application of the gateway; `cors_origins` may send from browsers."""
    allowed_origins = frozenset(cors_origins)

    async def handle(request: web.Request, event_type: str | None) -> web.Response:
        wbits = check_headers(request)
        authorization = request.headers.get("Authorization")
        principal = None
        if authorization is not None:
            principal = await authenticate_http(keys, authorization)
            check_scope(principal, "ingest:write")
        raw = await read_body(request)
        text = raw if wbits is None else await asyncio.to_thread(inflate, raw, wbits)
        body = parse_json_object(text)
        if principal is None:
            principal = await _body_principal(keys, body)
            check_scope(principal, "ingest:write")
        if event_type is None:
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise InvalidArgument("request body: batch must be a list of events")
            check_request_size(len(messages), len(text))
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
                except (ServiceError, HttpError) as error:
                    status = error.status if isinstance(error, HttpError) else _status(error)
                    # A body refused unread is then read and dropped by aiohttp (for up to
                    # its lingering time, 10 s): closing at once could reset the connection
                    # before the client reads this answer, and SDKs retry a reset.
                    return error_response(status, error.message)

        return handler

    async def preflight(request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and "*" not in allowed_origins and origin not in allowed_origins:
            return error_response(403, f"Origin {origin!r} may not send to this gateway")
        response = web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
        return response

    # client_max_size is left to read_body's own cap; aiohttp's applies to request.read().
    cors = cors_middleware(allowed_origins)
    app = web.Application(middlewares=[cors, unexpected_errors(error_response), _http_errors])
    paths: list[tuple[str, str | None]] = [(path, None) for path in BATCH_PATHS]
    paths += [(f"/v1/{event_type}", event_type) for event_type in SINGLE_TYPES]
    for path, event_type in paths:
        app.router.add_post(path, route(event_type))
        app.router.add_route("OPTIONS", path, preflight)
    return app


class Gateway:
    """The gateway's HTTP server: start on a port (0 picks one), stop gracefully."""

    def __init__(
        self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Serve `app` on host:port, over TLS when `ssl_context` is given."""
        # auto_decompress off: aiohttp would inflate bodies on the event loop, unbounded.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=5, auto_decompress=False
        )
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
