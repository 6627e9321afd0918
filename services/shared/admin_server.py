"""AdminService servicer: workspaces and API keys (protobuf <-> KeyStore only).

Served by the ingest service (see services/ingest/app.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import orjson
from audiences.v1 import admin_pb2, admin_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.shared.auth import KeyStore, current_workspace
from services.shared.clock import datetime_from_us
from services.shared.errors import invalid

# Normalises identity rules JSON, raising InvalidArgument (the ingest service's rules).
RulesValidator = Callable[[dict[str, Any] | None], dict[str, Any]]


def _timestamp(value_us: int | None) -> Timestamp | None:
    if value_us is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(datetime_from_us(value_us))
    return stamp


def _key_message(row: dict[str, Any]) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        id=row["key_id"],
        name=row["name"],
        scopes=row["scopes"].split(),
        prefix=row["prefix"],
        created_at=_timestamp(row["created_at_us"]),
        revoked_at=_timestamp(row["revoked_at_us"]),
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Workspace and key management: CreateWorkspace for the operator credential, the
    rest for an admin key of the workspace concerned."""

    def __init__(self, keys: KeyStore, validate_rules: RulesValidator | None = None) -> None:
        self._keys = keys
        self._validate_rules = validate_rules

    async def CreateWorkspace(
        self, request: admin_pb2.CreateWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateWorkspaceResponse:
        workspace_id, key_id, secret = await self._keys.create_workspace(request.name)
        workspace = await self._keys.get_workspace(workspace_id)
        keys = await self._keys.list_keys(workspace_id)
        return admin_pb2.CreateWorkspaceResponse(
            workspace=admin_pb2.Workspace(
                id=workspace_id,
                name=workspace["name"],
                created_at=_timestamp(workspace["created_at_us"]),
            ),
            admin_key=_key_message(next(k for k in keys if k["key_id"] == key_id)),
            admin_secret=secret,
        )

    async def GetWorkspace(
        self, request: admin_pb2.GetWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Workspace:
        workspace = await self._keys.get_workspace(current_workspace())
        return admin_pb2.Workspace(
            id=workspace["workspace_id"],
            name=workspace["name"],
            created_at=_timestamp(workspace["created_at_us"]),
        )

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateApiKeyResponse:
        workspace_id = current_workspace()
        key_id, secret = await self._keys.create_key(
            workspace_id, request.name or "key", list(request.scopes)
        )
        keys = await self._keys.list_keys(workspace_id)
        row = next(k for k in keys if k["key_id"] == key_id)
        return admin_pb2.CreateApiKeyResponse(key=_key_message(row), secret=secret)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListApiKeysResponse:
        keys = await self._keys.list_keys(current_workspace())
        return admin_pb2.ListApiKeysResponse(keys=[_key_message(k) for k in keys])

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeApiKeyResponse:
        row = await self._keys.revoke_key(current_workspace(), request.id)
        return admin_pb2.RevokeApiKeyResponse(key=_key_message(row))

    async def UpdateIdentityRules(
        self, request: admin_pb2.UpdateIdentityRulesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Workspace:
        if self._validate_rules is None:
            raise NotImplementedError
        rules = _json_object(request.identity_rules)
        workspace_id = current_workspace()
        await self._keys.set_identity_rules(workspace_id, self._validate_rules(rules))
        workspace = await self._keys.get_workspace(workspace_id)
        return admin_pb2.Workspace(
            id=workspace["workspace_id"],
            name=workspace["name"],
            created_at=_timestamp(workspace["created_at_us"]),
            identity_rules=orjson.dumps(workspace["identity_rules"]),
        )


def _json_object(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise invalid("identity_rules", "not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid("identity_rules", "must be a JSON object")
    return value
