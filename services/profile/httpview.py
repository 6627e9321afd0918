"""Read-only HTTP JSON view of profiles for web apps that cannot speak gRPC.

    GET /v1/profiles/{id_type}:{id_value}/traits     ?include=a,b
    GET /v1/profiles/{id_type}:{id_value}/audiences  ?context={"country":"DE",...}
    GET /v1/profiles/{id_type}:{id_value}/events     ?limit=N&next=TOKEN&include=Name,Other

Responses follow the Segment Profile API shape (``{"traits": {...}, "cursor": {...}}``,
``{"data": [...], "cursor": {...}}``). The same API keys as gRPC, with the
profile:read scope, as ``Authorization: Bearer <key>`` or HTTP basic auth with the key
as the user name (Segment's style). Errors are JSON with the matching HTTP status.
It runs inside the profile process as a background worker of its ServiceSpec and
translates HTTP to the same domain facade the servicer uses.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import grpc
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from services.profile import model
from services.profile.model import ProfileQuery, Section
from services.profile.service import ProfileService
from services.shared import auth
from services.shared.clock import datetime_from_us
from services.shared.errors import FieldViolation, InvalidArgument, ServiceError
from services.shared.http import unexpected_errors

log = logging.getLogger(__name__)

SCOPE = "profile:read"
DEFAULT_EVENT_LIMIT = 10
MAX_EVENT_LIMIT = 100

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}

_PROFILES = web.AppKey("profiles", ProfileService)
_KEYS = web.AppKey("keys", auth.KeyStore)
_WORKSPACE = web.RequestKey("workspace_id", str)


def _json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(
    status: int, message: str, violations: Sequence[FieldViolation] = ()
) -> web.Response:
    """The view's error answer; `code` is the HTTP reason, e.g. NOT_FOUND."""
    body = {
        "error": {
            "code": HTTPStatus(status).name,
            "message": message,
            "field_violations": [
                {"field": v.field, "description": v.description} for v in violations
            ],
        }
    }
    response = _json_response(body, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="audiences"'
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate and authorise, then map errors to JSON error responses.

    Only headers are read: a request body is never read (nor inflated: aiohttp's
    decompression is off, see start), whatever its size or encoding.
    """
    try:
        principal = await auth.authenticate_http(
            request.app[_KEYS], request.headers.get("Authorization")
        )
        auth.check_scope(principal, SCOPE)
        request[_WORKSPACE] = principal.workspace_id
        return await handler(request)
    except ServiceError as error:
        status = _HTTP_STATUS.get(error.code, 500)
        return error_response(status, error.message, error.violations)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 405:
            response = error_response(405, f"method {request.method} not allowed: use GET")
            response.headers["Allow"] = error.headers.get("Allow", "GET")
            return response
        if error.status == 404:
            return error_response(404, f"no such path: {request.path}")
        return error_response(error.status, error.reason)


def _identifier(request: web.Request) -> model.Identifier:
    id_type, separator, id_value = request.match_info["identifier"].partition(":")
    if not separator:
        raise InvalidArgument(
            "identifier: expected {id_type}:{id_value}",
            [FieldViolation("identifier", "expected {id_type}:{id_value}, e.g. user_id:42")],
        )
    return model.parse_identifier(id_type, id_value)


def _csv(request: web.Request, name: str) -> list[str]:
    return [part for part in request.query.get(name, "").split(",") if part]


def _cursor(request: web.Request, next_token: str = "") -> dict[str, object]:
    return {"url": request.path, "has_more": bool(next_token), "next": next_token}


def _fragment(json_text: str | None) -> orjson.Fragment | None:
    return None if json_text is None else orjson.Fragment(json_text)


def _iso(value_us: int) -> str:
    return datetime_from_us(value_us).isoformat().replace("+00:00", "Z")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return DEFAULT_EVENT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_EVENT_LIMIT:
        raise InvalidArgument(
            f"limit: must be an integer from 1 to {MAX_EVENT_LIMIT}",
            [FieldViolation("limit", f"must be an integer from 1 to {MAX_EVENT_LIMIT}")],
        )
    return int(raw)


async def traits(request: web.Request) -> web.Response:
    """The profile's traits (``include`` selects keys)."""
    identifier = _identifier(request)
    query = model.parse_query([Section.TRAITS], _csv(request, "include"), "include")
    profile = await request.app[_PROFILES].get_profile(request[_WORKSPACE], identifier, query)
    # The traits are JSON text already: embedded as they are, never re-encoded.
    return _json_response(
        {"traits": orjson.Fragment(profile.traits or b"{}"), "cursor": _cursor(request)}
    )


def _context(request: web.Request) -> dict[str, Any] | None:
    """The ``context`` query parameter: a JSON object of request attributes (the
    RequestContext fields, ``utm`` as an object of source/medium/..., ``custom`` free-form
    keys); None when absent. Bad JSON or attributes are 400 with field violations."""
    raw = request.query.get("context")
    if raw is None:
        return None
    try:
        given = orjson.loads(raw)
    except orjson.JSONDecodeError:
        given = None
    if not isinstance(given, dict):
        raise InvalidArgument(
            "context: must be a JSON object",
            [FieldViolation("context", "must be a JSON object of request attributes")],
        )
    custom = given.pop("custom", None)
    return request.app[_PROFILES].request_context(given, custom, None, "context")


async def audiences(request: web.Request) -> web.Response:
    """The audiences the profile is in, with when it entered each; with a ``context``
    also the context audiences this request qualifies for."""
    identifier = _identifier(request)
    context = _context(request)
    profiles = request.app[_PROFILES]
    body: dict[str, object] = {}
    if context is None:
        query = ProfileQuery(frozenset({Section.AUDIENCES}))
        profile = await profiles.get_profile(request[_WORKSPACE], identifier, query)
    else:
        profile, found = await profiles.context_audiences(request[_WORKSPACE], identifier, context)
        body["context_audiences"] = {key: {"holdout": holdout} for key, holdout in found}
    return _json_response(
        {
            "audiences": {
                key: {"entered_at": _iso(int(at_us)), "holdout": key in profile.holdouts}
                for key, at_us in profile.audiences.items()
            },
            **body,
            "cursor": _cursor(request),
        }
    )


async def events(request: web.Request) -> web.Response:
    """The profile's events, newest first, paged with ``limit`` and ``next``."""
    identifier = _identifier(request)
    page = await request.app[_PROFILES].list_events(
        request[_WORKSPACE],
        identifier,
        _limit(request),
        request.query.get("next", ""),
        model.event_names(_csv(request, "include"), "include"),
    )
    data = [
        {
            "type": event.type,
            "message_id": event.message_id,
            "timestamp": _iso(event.timestamp_us),
            "event" if event.type == "track" else "name": event.name,
            "user_id": event.user_id,
            "anonymous_id": event.anonymous_id,
            # Stored JSON text, embedded as it is (never decoded and re-encoded).
            "properties": _fragment(event.properties),
            "traits": _fragment(event.traits),
            "context": _fragment(event.context),
        }
        for event in page.events
    ]
    return _json_response({"data": data, "cursor": _cursor(request, page.next_page_token)})


def make_app(profiles: ProfileService, keys: auth.KeyStore) -> web.Application:
    """The aiohttp application of the view."""
    app = web.Application(middlewares=[unexpected_errors(error_response), _guard])
    app[_PROFILES] = profiles
    app[_KEYS] = keys
    app.router.add_get("/v1/profiles/{identifier}/traits", traits)
    app.router.add_get("/v1/profiles/{identifier}/audiences", audiences)
    app.router.add_get("/v1/profiles/{identifier}/events", events)
    return app


async def start(
    profiles: ProfileService,
    keys: auth.KeyStore,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Bind and start the view (over TLS when `ssl_context` is given); port 0 picks a
    free port. Returns (runner, bound port)."""
    # auto_decompress off: a request body is never read, so it must not be inflated either.
    runner = web.AppRunner(make_app(profiles, keys), access_log=None, auto_decompress=False)
    await runner.setup()
    # reuse_port: several profile processes share the HTTP port as they share gRPC's.
    site = web.TCPSite(runner, host, port, reuse_port=True, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    return runner, bound


async def serve(
    profiles: ProfileService,
    keys: auth.KeyStore,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Background worker: serve the view (over TLS when `ssl_context` is given) until
    cancelled.

    A port that cannot be bound is logged and the worker ends, leaving the gRPC API
    (the primary interface) serving rather than taking the process down.
    """
    try:
        runner, bound = await start(profiles, keys, host, port, ssl_context)
    except OSError as error:
        log.error("profile HTTP view could not bind %s:%d: %s", host, port, error)
        return
    log.info("profile HTTP view serving on %s:%d", host, bound)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
