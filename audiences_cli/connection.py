"""Where the services are and which key to send: flags, then environment, then the
demo workspace file that `make run` leaves in var/.

Addresses use the same `<SERVICE>_ADDR` variables the services use for their peers
(INGEST_ADDR, SEGMENTATION_ADDR, ...), falling back to `make run`'s fixed ports. Keys:
`--key` (or AUDIENCES_KEY) for every call, else the key of the scope a call needs from
AUDIENCES_ADMIN_KEY / AUDIENCES_INGEST_KEY / AUDIENCES_PROFILE_KEY, else from
var/demo-workspace.json (admin_key, ingest_key, profile_key).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from audiences.v1 import (
    ingest_pb2_grpc,
    prediction_pb2_grpc,
    profile_pb2_grpc,
    segmentation_pb2_grpc,
    sync_pb2_grpc,
)

from services.shared.config import DEFAULT_PORTS

DEMO_KEYS_FILE = Path("var/demo-workspace.json")
# The scope each service's calls need (recommendation objects need admin on profile).
SCOPES = ("admin", "ingest", "profile")


class ConfigError(Exception):
    """The CLI cannot tell where to connect or with which key."""


def service_addresses(env: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Each service's host:port: an override (--addr), its <SERVICE>_ADDR, or make run's port."""
    return {
        name: overrides.get(name) or env.get(f"{name.upper()}_ADDR") or f"127.0.0.1:{port}"
        for name, port in DEFAULT_PORTS.items()
    }


def parse_addr_overrides(values: list[str]) -> dict[str, str]:
    """`--addr sync=10.0.0.5:50055` flags into {service: address}."""
    found: dict[str, str] = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or name not in DEFAULT_PORTS or ":" not in address:
            raise ConfigError(
                f"--addr {value!r}: expected SERVICE=HOST:PORT with SERVICE one of "
                f"{', '.join(DEFAULT_PORTS)}"
            )
        found[name] = address
    return found


def resolve_keys(
    env: Mapping[str, str], key: str | None, keys_file: Path | None
) -> dict[str, str | None]:
    """The key for each scope (admin, ingest, profile); None where nothing gives one."""
    single = key or env.get("AUDIENCES_KEY")
    saved: dict[str, Any] = {}
    path = keys_file if keys_file is not None else DEMO_KEYS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: not a readable keys file ({error})") from error
    return {
        scope: single or env.get(f"AUDIENCES_{scope.upper()}_KEY") or saved.get(f"{scope}_key")
        for scope in SCOPES
    }


@dataclass(frozen=True)
class Tls:
    """PEM files for TLS: the CA that signed the services' certificates, and for
    mutual TLS the client's certificate and key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together (mutual TLS)")
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes() if self.key else None,
                certificate_chain=self.cert.read_bytes() if self.cert else None,
            )
        except OSError as error:
            raise ConfigError(f"TLS file: {error}") from error


@dataclass
class Connection:
    """Lazily opened channels to each service, and the metadata for each scope."""

    addresses: dict[str, str]
    keys: dict[str, str | None]
    timeout: float = 60.0
    tls: Tls | None = None
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    @classmethod
    def from_options(
        cls,
        addr: list[str],
        key: str | None,
        keys_file: Path | None,
        timeout: float,
        tls: Tls | None = None,
    ) -> Connection:
        """Build from the global flags and the environment."""
        env = os.environ
        return cls(
            service_addresses(env, parse_addr_overrides(addr)),
            resolve_keys(env, key, keys_file),
            timeout,
            tls,
        )

    def channel(self, service: str) -> grpc.Channel:
        """The (cached) channel to `service`: TLS when a CA is given, else plaintext."""
        if service not in self._channels:
            address = self.addresses[service]
            self._channels[service] = (
                grpc.insecure_channel(address)
                if self.tls is None
                else grpc.secure_channel(address, self.tls.credentials())
            )
        return self._channels[service]

    def metadata(self, scope: str) -> tuple[tuple[str, str], ...]:
        """`authorization: Bearer <key>` for a call needing `scope`."""
        secret = self.keys.get(scope)
        if not secret:
            raise ConfigError(
                f"no {scope} key: pass --key, set AUDIENCES_{scope.upper()}_KEY or "
                f"AUDIENCES_KEY, or run next to `make run` (it writes {DEMO_KEYS_FILE})"
            )
        return (("authorization", f"Bearer {secret}"),)

    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channel("ingest"))

    def segmentation(self) -> segmentation_pb2_grpc.SegmentationServiceStub:
        return segmentation_pb2_grpc.SegmentationServiceStub(self.channel("segmentation"))

    def prediction(self) -> prediction_pb2_grpc.PredictionServiceStub:
        return prediction_pb2_grpc.PredictionServiceStub(self.channel("prediction"))

    def profile(self) -> profile_pb2_grpc.ProfileServiceStub:
        return profile_pb2_grpc.ProfileServiceStub(self.channel("profile"))

    def sync(self) -> sync_pb2_grpc.SyncServiceStub:
        return sync_pb2_grpc.SyncServiceStub(self.channel("sync"))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
