"""Workspaces and API keys: creation, hashing, lookup and per-RPC scope checks.

A key is a random secret shown once; only its SHA-256 is stored (the secret has 256
bits of entropy, so a slow password hash would add latency and no safety). Every RPC
is authorised from ``authorization: Bearer <secret>`` metadata and runs with the key's
workspace in a context variable, so no call can reach another workspace's data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.clock import Clock, SystemClock
from services.shared.db.tables import api_keys, workspaces
from services.shared.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    invalid,
    too_long,
)

log = logging.getLogger(__name__)

# workspaces.name and api_keys.name hold this many characters.
MAX_NAME_CHARS = 255
# The most key lookups one process caches; the least recently used goes first.
MAX_CACHED_KEYS = 10_000

SCOPES = ("ingest:write", "profile:read", "admin")
# Not a key scope: what the operator credential (OPERATOR_TOKEN) grants, held by no key.
OPERATOR = "operator"
KEY_PREFIX = "aud_"

# The scope each service's RPCs need; individual methods may override it.
SERVICE_SCOPES = {
    "audiences.v1.IngestService": "ingest:write",
    "audiences.v1.ProfileService": "profile:read",
    "audiences.v1.SegmentationService": "admin",
    "audiences.v1.PredictionService": "admin",
    "audiences.v1.SyncService": "admin",
    "audiences.v1.AdminService": "admin",
}
METHOD_SCOPES = {
    # Erasing a person is an administrative act, not a read.
    "/audiences.v1.ProfileService/DeleteProfile": "admin",
    # Recommendation objects are configuration (and training a job), not profile reads.
    "/audiences.v1.ProfileService/CreateRecommendationModel": "admin",
    "/audiences.v1.ProfileService/GetRecommendationModel": "admin",
    "/audiences.v1.ProfileService/ListRecommendationModels": "admin",
    "/audiences.v1.ProfileService/DeleteRecommendationModel": "admin",
    "/audiences.v1.ProfileService/TrainRecommendationModel": "admin",
    # A workspace's keys must not mint workspaces without limit: only the operator may.
    "/audiences.v1.AdminService/CreateWorkspace": OPERATOR,
}
# Infrastructure every client (and Kubernetes) may call without a key.
PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and the workspace it belongs to."""

    key_id: str
    workspace_id: str
    scopes: frozenset[str]


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller")
    return principal


def current_workspace() -> str:
    """The workspace of the RPC being served."""
    return current_principal().workspace_id


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Bind the caller for the rest of this task (used by the auth interceptor)."""
    return _current.set(principal)


def required_scope(method: str) -> str | None:
    """The scope `method` (e.g. '/audiences.v1.IngestService/Track') needs; None if public."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in PUBLIC_SERVICES:
        return None
    return METHOD_SCOPES.get(method) or SERVICE_SCOPES.get(service, "admin")


def hash_secret(secret: str) -> str:
    """The stored form of a key secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_secret(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The secret of an ``authorization: Bearer`` header, if any."""
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def http_secret(authorization: str | None) -> str | None:
    """The API key of an HTTP ``Authorization`` header, if any.

    ``Bearer <secret>``, or Segment-style ``Basic`` with the secret as the user name
    (the password is ignored), so Segment SDKs and Profile API clients work unchanged.
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer":
        return token or None
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(token, validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


HTTP_AUTHORIZATION_FORMS = "'Basic <base64 of key:>' or 'Bearer <key>'"


async def authenticate_http(keys: KeyStore, authorization: str | None) -> Principal:
    """The principal of an HTTP ``Authorization`` header (see http_secret).

    Unauthenticated says what is wrong in HTTP terms: the header missing, a header
    that names no key (an unknown scheme, bad base64, an empty user), or a key that is
    unknown or revoked.
    """
    if not authorization:
        raise Unauthenticated(f"missing Authorization header: send {HTTP_AUTHORIZATION_FORMS}")
    secret = http_secret(authorization)
    if secret is None:
        raise Unauthenticated(
            f"malformed Authorization header: expected {HTTP_AUTHORIZATION_FORMS}"
        )
    return await keys.authenticate(secret)


class KeyStore:
    """Workspaces and API keys in the database, with a short-lived cache of lookups.

    A looked-up key is trusted for `cache_seconds` (so a revocation in another process
    takes effect within that time). Requests never queue behind the database for a key
    in use: once an entry has lived half its time, the next request that reads it starts
    one background lookup that renews it, and is answered from the cache meanwhile. Only
    a key not seen for `cache_seconds` is looked up while its request waits, and
    concurrent requests with the same key share that one lookup (before, every request
    arriving while the entry had just expired ran a lookup of its own: a burst of
    database connections and a latency spike every 30 s under load).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cache_seconds: float = 30.0,
        clock: Clock | None = None,
        operator_token: str | None = None,
    ) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._clock = clock or SystemClock()
        self._operator_token = operator_token.encode() if operator_token else None
        # Keyed by the secret as sent, so a request whose key is cached hashes nothing;
        # in order of use, so a full cache drops the key least recently used.
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Principal | None]] = {}
        # Bumped by forget(): a lookup started before it must not refill the cache.
        self._generation = 0

    async def authenticate(self, secret: str | None) -> Principal:
        """The principal of a secret; Unauthenticated when missing, unknown or revoked."""
        if not secret:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        cached = self._cache.get(secret)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(secret)
            if cached[0] - now < self._cache_seconds / 2:
                self._load(secret)  # renew ahead of expiry; this request need not wait
            principal = cached[1]
        else:
            # Shielded: a caller that goes away must not cancel the lookup others share.
            principal = await asyncio.shield(self._load(secret))
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        return principal

    def _load(self, secret: str) -> asyncio.Task[Principal | None]:
        """The one lookup of `secret` in flight, started if there is none."""
        task = self._loading.get(secret)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup_and_cache(secret))
            self._loading[secret] = task
            task.add_done_callback(lambda done: self._loaded(secret, done))
        return task

    def _loaded(self, secret: str, task: asyncio.Task[Principal | None]) -> None:
        if self._loading.get(secret) is task:
            del self._loading[secret]
        if not task.cancelled() and task.exception() is not None:
            # Logged here because a background renewal has no caller to report to (a
            # request that awaited the lookup gets the error as well). The entry is
            # served until it expires; then a request's own lookup reports the error.
            log.warning("API key lookup failed: %r", task.exception())

    async def _lookup_and_cache(self, secret: str) -> Principal | None:
        generation = self._generation
        principal = await self._lookup(hash_secret(secret))
        if generation == self._generation:
            # Unknown keys are cached too (as None): a caller cycling through random
            # secrets must not grow the cache without bound, nor push out keys in use
            # for longer than one lookup each (least recently used goes first).
            self._cache[secret] = (time.monotonic() + self._cache_seconds, principal)
            self._cache.move_to_end(secret)
            while len(self._cache) > MAX_CACHED_KEYS:
                self._cache.popitem(last=False)
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        query = select(api_keys.c.key_id, api_keys.c.workspace_id, api_keys.c.scopes).where(
            api_keys.c.secret_hash == digest, api_keys.c.revoked_at_us.is_(None)
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return Principal(row.key_id, row.workspace_id, frozenset(row.scopes.split()))

    async def authenticate_operator(self, secret: str | None) -> None:
        """Pass only the operator credential: PermissionDenied for a workspace key (of
        any scope), Unauthenticated for a missing or unknown secret."""
        if (
            secret
            and self._operator_token is not None
            and hmac.compare_digest(secret.encode(), self._operator_token)
        ):
            return
        await self.authenticate(secret)  # Unauthenticated unless it is a real key
        raise PermissionDenied(
            "creating workspaces needs the operator credential (OPERATOR_TOKEN), "
            "not a workspace key"
        )

    def forget(self) -> None:
        """Drop cached lookups (after a revocation in this process), and let no lookup
        already in flight refill the cache or be shared by later requests."""
        self._generation += 1
        self._cache.clear()
        self._loading.clear()

    async def workspace_ids(self) -> list[str]:
        """Every workspace's id, oldest first."""
        query = select(workspaces.c.workspace_id).order_by(
            workspaces.c.created_at_us, workspaces.c.workspace_id
        )
        async with self._engine.connect() as connection:
            return [row[0] for row in await connection.execute(query)]

    async def create_workspace(self, name: str) -> tuple[str, str, str]:
        """Create a workspace and its first admin key: (workspace_id, key_id, secret)."""
        if not name.strip():
            raise invalid("name", "must not be empty")
        _check_name(name)
        workspace_id = "ws_" + secrets.token_hex(8)
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(workspaces).values(
                    workspace_id=workspace_id, name=name, created_at_us=self._clock.now_us()
                )
            )
        key_id, secret = await self.create_key(workspace_id, "admin", ["admin"])
        return workspace_id, key_id, secret

    async def create_key(self, workspace_id: str, name: str, scopes: list[str]) -> tuple[str, str]:
        """Create an API key with `scopes`; returns (key_id, secret). The secret is shown once."""
        _check_name(name)
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise InvalidArgument(
                f"scopes: must be a non-empty subset of {', '.join(SCOPES)}; got {scopes}"
            )
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(api_keys).values(
                    key_id=key_id,
                    workspace_id=workspace_id,
                    name=name,
                    secret_hash=hash_secret(secret),
                    prefix=secret[:10],
                    scopes=" ".join(sorted(set(scopes))),
                    created_at_us=self._clock.now_us(),
                )
            )
        return key_id, secret

    async def list_keys(self, workspace_id: str) -> list[dict[str, Any]]:
        """Every key of a workspace (never the secrets)."""
        query = select(api_keys).where(api_keys.c.workspace_id == workspace_id)
        async with self._engine.connect() as connection:
            return [dict(row._mapping) for row in await connection.execute(query)]

    async def revoke_key(self, workspace_id: str, key_id: str) -> dict[str, Any]:
        """Revoke a key of this workspace; NotFound for another workspace's key."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(api_keys)
                .where(api_keys.c.workspace_id == workspace_id, api_keys.c.key_id == key_id)
                .values(revoked_at_us=self._clock.now_us())
                .returning(*api_keys.c)
            )
            row = result.first()
        if row is None:
            raise NotFound(f"api key {key_id!r} not found in this workspace")
        self.forget()
        return dict(row._mapping)

    async def set_identity_rules(self, workspace_id: str, rules: dict[str, Any] | None) -> None:
        """Store a workspace's identity rules JSON (None: back to the defaults)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                update(workspaces)
                .where(workspaces.c.workspace_id == workspace_id)
                .values(identity_rules=rules)
            )

    async def get_workspace(self, workspace_id: str) -> dict[str, Any]:
        """The workspace row."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(workspaces).where(workspaces.c.workspace_id == workspace_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"workspace {workspace_id!r} not found")
        return dict(row._mapping)


def _check_name(name: str) -> None:
    violation = too_long("name", name, MAX_NAME_CHARS)
    if violation is not None:
        raise InvalidArgument(f"name: {violation.description}", [violation])


def check_scope(principal: Principal, scope: str) -> None:
    """PermissionDenied unless the principal's key carries `scope`."""
    if scope not in principal.scopes:
        raise PermissionDenied(f"this API key lacks the '{scope}' scope")
