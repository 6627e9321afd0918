"""Plumbing shared by the HTTP front ends (the ingest gateway, the profile view)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from services.shared.errors import refused_value

log = logging.getLogger(__name__)


def unexpected_errors(respond: Callable[[int, str], web.Response]) -> Middleware:
    """A middleware answering what the app did not: 400 for a value of the request that
    only the database refused (see errors.refused_value), else a logged 500; both as
    `respond(status, message)`, the app's own JSON error shape."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as error:
            refused = refused_value(error)
            if refused is not None:
                return respond(400, refused.message)
            log.exception("HTTP %s %s failed", request.method, request.path)
            return respond(500, "internal error")

    return middleware
