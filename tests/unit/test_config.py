"""Settings come from the environment, with the embedded default when unset."""

import pytest

from services.shared.config import (
    EMBEDDED_DATABASE_URL,
    EMBEDDED_REDIS_ADDR,
    EMBEDDED_REDIS_URL,
    Settings,
)

pytestmark = pytest.mark.unit


def test_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "GRPC_PORT", "EMBEDDED_REDIS_ADDR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.database_url == EMBEDDED_DATABASE_URL
    assert settings.redis_url == EMBEDDED_REDIS_URL
    assert settings.embedded_redis_address == EMBEDDED_REDIS_ADDR
    assert settings.embedded
    assert settings.port_for("profile") == 50054


def test_production_urls_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("GRPC_PORT", "6000")
    monkeypatch.setenv("PROFILE_ADDR", "profile:50054")
    settings = Settings.from_env()
    assert not settings.embedded
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.embedded_redis_address is None  # nothing to serve
    assert settings.port_for("ingest") == 6000
    assert settings.peer_addresses["profile"] == "profile:50054"
    assert settings.peer_addresses["sync"] == "127.0.0.1:50055"


def test_ingest_cors_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGEST_CORS_ORIGINS", raising=False)
    assert Settings.from_env().ingest_cors_origins == ("*",)
    monkeypatch.setenv("INGEST_CORS_ORIGINS", "https://a.example, https://b.example,")
    assert Settings.from_env().ingest_cors_origins == ("https://a.example", "https://b.example")


def test_security_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_TOKEN", "t" * 40)
    monkeypatch.setenv("TLS_CERT_FILE", "/certs/server.pem")
    monkeypatch.setenv("TLS_KEY_FILE", "/certs/server.key")
    monkeypatch.setenv("TLS_CLIENT_CA_FILE", "/certs/clients-ca.pem")
    settings = Settings.from_env()
    assert settings.operator_token == "t" * 40
    assert (settings.tls_cert_file, settings.tls_key_file) == (
        "/certs/server.pem",
        "/certs/server.key",
    )
    assert settings.tls_client_ca_file == "/certs/clients-ca.pem"


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"OPERATOR_TOKEN": "short"}, "at least 32"),
        ({"TLS_CERT_FILE": "/certs/server.pem"}, "set together"),
        ({"TLS_CLIENT_CA_FILE": "/certs/ca.pem"}, "needs TLS_CERT_FILE"),
    ],
)
def test_unsafe_security_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], complaint: str
) -> None:
    for name in ("OPERATOR_TOKEN", "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=complaint):
        Settings.from_env()


def test_the_embedded_store_can_move(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("EMBEDDED_REDIS_ADDR", "127.0.0.1:7000")
    settings = Settings.from_env()
    assert settings.embedded_redis_address == "127.0.0.1:7000"
    assert settings.redis_url == "redis://127.0.0.1:7000/0"
