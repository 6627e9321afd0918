"""Pure rules of authentication: scopes per method, bearer parsing, hashing."""

import pytest

from services.shared import auth
from services.shared.errors import PermissionDenied

pytestmark = pytest.mark.unit


def test_every_service_method_needs_its_scope() -> None:
    assert auth.required_scope("/audiences.v1.IngestService/Batch") == "ingest:write"
    assert auth.required_scope("/audiences.v1.ProfileService/GetProfile") == "profile:read"
    assert auth.required_scope("/audiences.v1.ProfileService/DeleteProfile") == "admin"
    assert auth.required_scope("/audiences.v1.SegmentationService/Preview") == "admin"
    assert auth.required_scope("/audiences.v1.AdminService/CreateApiKey") == "admin"


def test_health_and_reflection_are_public() -> None:
    assert auth.required_scope("/grpc.health.v1.Health/Check") is None
    assert auth.required_scope("/grpc.reflection.v1alpha.ServerReflection/X") is None


def test_unknown_services_default_to_admin() -> None:
    assert auth.required_scope("/some.Other/Thing") == "admin"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("authorization", b"Bearer abc"),), "abc"),
        ((("authorization", "Basic abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((("x-other", "Bearer abc"),), None),
        (None, None),
    ],
)
def test_bearer_secret(metadata, expected) -> None:  # type: ignore[no-untyped-def]
    assert auth.bearer_secret(metadata) == expected


def test_secrets_are_stored_as_sha256() -> None:
    digest = auth.hash_secret("aud_x")
    assert len(digest) == 64 and digest != "aud_x"
    assert digest == auth.hash_secret("aud_x")


def test_scope_check() -> None:
    principal = auth.Principal("k", "ws", frozenset({"profile:read"}))
    auth.check_scope(principal, "profile:read")
    with pytest.raises(PermissionDenied, match="ingest:write"):
        auth.check_scope(principal, "ingest:write")
