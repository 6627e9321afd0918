"""Settings from the environment, read once per process.

Every knob is an environment variable so the same image runs embedded, in tests and on
Kubernetes. The embedded default needs nothing installed: a SQLite file and a
Redis-compatible store that `make run` serves on a loopback port
(services/shared/redis.py), so every process of a run and the operator commands share it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///var/audiences.db"
# Where `make run` serves its embedded Redis-compatible store when REDIS_URL is unset
# (EMBEDDED_REDIS_ADDR moves it); every process and command then dials it there.
EMBEDDED_REDIS_ADDR = "127.0.0.1:50056"
EMBEDDED_REDIS_URL = f"redis://{EMBEDDED_REDIS_ADDR}/0"

# Fixed local ports for `make run`; each service's Deployment sets GRPC_PORT.
DEFAULT_PORTS = {
    "ingest": 50051,
    "segmentation": 50052,
    "prediction": 50053,
    "profile": 50054,
    "sync": 50055,
}


# A guessable operator token would hand out workspaces; 32 random bytes in base64 are 43.
MIN_OPERATOR_TOKEN_CHARS = 32


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    """Process configuration. Construct with `Settings.from_env()`."""

    # SQLAlchemy async URL: postgresql+asyncpg://... (production) or sqlite+aiosqlite://...
    database_url: str = EMBEDDED_DATABASE_URL
    # redis://host:port/db; with REDIS_URL unset, the embedded store's URL.
    redis_url: str = EMBEDDED_REDIS_URL
    # host:port the dev runner serves the embedded store on (REDIS_URL unset); None
    # when REDIS_URL names the Redis to use and nothing is served.
    embedded_redis_address: str | None = None
    # Address to bind gRPC servers to.
    grpc_host: str = "127.0.0.1"
    # Overrides the service's default port when set (one service per process).
    grpc_port: int | None = None
    # Seconds in-flight RPCs get to finish after SIGTERM.
    shutdown_grace_seconds: float = 10.0
    # How long a verified API key is trusted before it is looked up again (revocation lag).
    api_key_cache_seconds: float = 30.0
    # Database pool size per process.
    db_pool_size: int = 10
    # OpenTelemetry exporter: otlp, console or none (standard OTEL_TRACES_EXPORTER).
    traces_exporter: str = "none"
    # When set, every process reads `now` (integer microseconds) from this Redis key
    # (the wall clock while it is absent): one controllable clock for a run of separate
    # processes (tests, replays). Empty: the wall clock.
    clock_redis_key: str = ""
    # Peers, as <SERVICE>_ADDR (host:port).
    peer_addresses: dict[str, str] = field(default_factory=dict)
    # Browser origins that may send to the ingest HTTP gateway (CORS); "*" is any origin,
    # the default, since write keys are public in browser SDKs anyway.
    ingest_cors_origins: tuple[str, ...] = ("*",)
    # The operator credential: the only bearer token CreateWorkspace accepts (workspace
    # keys, even admin ones, cannot create workspaces). None: no RPC creates workspaces.
    operator_token: str | None = None
    # TLS for every gRPC and HTTP port: PEM certificate chain and private key files.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    tls_client_ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.operator_token is not None and len(self.operator_token) < MIN_OPERATOR_TOKEN_CHARS:
            raise ValueError(
                f"OPERATOR_TOKEN must be at least {MIN_OPERATOR_TOKEN_CHARS} characters"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from the environment, falling back to the embedded defaults."""
        env = os.environ
        port = env.get("GRPC_PORT")
        redis_url = env.get("REDIS_URL")
        embedded_redis = None if redis_url else env.get("EMBEDDED_REDIS_ADDR", EMBEDDED_REDIS_ADDR)
        return cls(
            database_url=env.get("DATABASE_URL", EMBEDDED_DATABASE_URL),
            redis_url=redis_url or f"redis://{embedded_redis}/0",
            embedded_redis_address=embedded_redis,
            grpc_host=env.get("GRPC_HOST", "127.0.0.1"),
            grpc_port=int(port) if port else None,
            shutdown_grace_seconds=float(env.get("SHUTDOWN_GRACE_SECONDS", "10")),
            api_key_cache_seconds=float(env.get("API_KEY_CACHE_SECONDS", "30")),
            db_pool_size=_env_int("DB_POOL_SIZE", 10),
            traces_exporter=env.get("OTEL_TRACES_EXPORTER", "none"),
            clock_redis_key=env.get("CLOCK_REDIS_KEY", ""),
            peer_addresses={
                name: env.get(f"{name.upper()}_ADDR", f"127.0.0.1:{port}")
                for name, port in DEFAULT_PORTS.items()
            },
            ingest_cors_origins=tuple(
                origin.strip()
                for origin in env.get("INGEST_CORS_ORIGINS", "*").split(",")
                if origin.strip()
            ),
            operator_token=env.get("OPERATOR_TOKEN") or None,
            tls_cert_file=env.get("TLS_CERT_FILE") or None,
            tls_key_file=env.get("TLS_KEY_FILE") or None,
            tls_client_ca_file=env.get("TLS_CLIENT_CA_FILE") or None,
        )

    def port_for(self, service: str) -> int:
        """The port a service listens on: GRPC_PORT if set, else its fixed default."""
        return self.grpc_port if self.grpc_port is not None else DEFAULT_PORTS[service]

    @property
    def embedded(self) -> bool:
        """True when running on the embedded default rather than real servers."""
        return self.database_url.startswith("sqlite") or self.embedded_redis_address is not None
