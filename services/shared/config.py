"""Settings from the environment, read once per process.

Every knob is an environment variable so the same image runs embedded, in tests and on
Kubernetes. The embedded default needs nothing installed: a SQLite file and an
in-process Redis-compatible store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///var/audiences.db"
EMBEDDED_REDIS_URL = "memory://"

# Fixed local ports for `make run`; each service's Deployment sets GRPC_PORT.
DEFAULT_PORTS = {
    "ingest": 50051,
    "segmentation": 50052,
    "prediction": 50053,
    "profile": 50054,
    "sync": 50055,
}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    """Process configuration. Construct with `Settings.from_env()`."""

    # SQLAlchemy async URL: postgresql+asyncpg://... (production) or sqlite+aiosqlite://...
    database_url: str = EMBEDDED_DATABASE_URL
    # redis://host:port/db (production) or memory:// (in-process store, embedded only).
    redis_url: str = EMBEDDED_REDIS_URL
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

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from the environment, falling back to the embedded defaults."""
        env = os.environ
        port = env.get("GRPC_PORT")
        return cls(
            database_url=env.get("DATABASE_URL", EMBEDDED_DATABASE_URL),
            redis_url=env.get("REDIS_URL", EMBEDDED_REDIS_URL),
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
        )

    def port_for(self, service: str) -> int:
        """The port a service listens on: GRPC_PORT if set, else its fixed default."""
        return self.grpc_port if self.grpc_port is not None else DEFAULT_PORTS[service]

    @property
    def embedded(self) -> bool:
        """True when running on the embedded default rather than real servers."""
        return self.database_url.startswith("sqlite") or self.redis_url.startswith("memory")
