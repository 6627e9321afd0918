"""The `audiences` console script over mutual TLS: with the services' CA and a client
certificate it sends and reads; without the certificate the services refuse it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from services.shared.cli import create_workspace
from services.shared.config import Settings
from tests.helpers.certificates import make_certificates
from tests.helpers.cli import Cli, events_file
from tests.helpers.servers import as_processes

pytestmark = pytest.mark.e2e


async def test_over_mutual_tls(database_url: str, redis_url: str, tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    keys = await create_workspace(Settings(database_url=database_url, redis_url=redis_url), "t")
    tls_env = {
        "TLS_CERT_FILE": str(certificates.server_cert),
        "TLS_KEY_FILE": str(certificates.server_key),
        "TLS_CLIENT_CA_FILE": str(certificates.ca),
    }
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=certificates.client_key.read_bytes(),
        certificate_chain=certificates.client_cert.read_bytes(),
    )
    names = ["ingest", "profile"]
    async with as_processes(database_url, redis_url, names, tls_env, credentials) as found:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCES_")}
        env |= {
            "INGEST_ADDR": found["ingest"],
            "PROFILE_ADDR": found["profile"],
            "AUDIENCES_INGEST_KEY": keys["ingest_key"],
            "AUDIENCES_PROFILE_KEY": keys["profile_key"],
            "AUDIENCES_TLS_CA": str(certificates.ca),
        }
        cli = Cli(env, tmp_path)
        events = events_file(tmp_path / "e.jsonl", [{"type": "identify", "userId": "ada"}])
        client = (
            "--tls-cert",
            str(certificates.client_cert),
            "--tls-key",
            str(certificates.client_key),
        )
        assert "accepted=1" in await cli.ok(*client, "send", str(events))
        profile = json.loads(await cli.ok(*client, "profile", "user_id:ada", "-o", "json"))
        assert profile["identifiers"] == ["user_id:ada"]
        # Without a client certificate the services refuse the connection.
        refused = await cli("profile", "user_id:ada")
        assert refused.code == 1 and "UNAVAILABLE" in refused.err
