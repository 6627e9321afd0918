"""Where the CLI connects and with which key: flags, environment, then var/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiences_cli.connection import (
    ConfigError,
    Connection,
    parse_addr_overrides,
    resolve_keys,
    service_addresses,
)

pytestmark = pytest.mark.unit


def test_addresses_from_flags_then_environment_then_make_run_ports() -> None:
    env = {"SYNC_ADDR": "sync.internal:7000", "PROFILE_ADDR": "profile:1"}
    found = service_addresses(env, parse_addr_overrides(["profile=10.0.0.9:50054"]))
    assert found["profile"] == "10.0.0.9:50054"
    assert found["sync"] == "sync.internal:7000"
    assert found["ingest"] == "127.0.0.1:50051"
    with pytest.raises(ConfigError, match="SERVICE=HOST:PORT"):
        parse_addr_overrides(["billing=1.2.3.4:5"])


def test_keys_per_scope_from_flag_environment_or_the_demo_file(tmp_path: Path) -> None:
    saved = tmp_path / "demo.json"
    saved.write_text(json.dumps({"admin_key": "A", "ingest_key": "I", "profile_key": "P"}))
    assert resolve_keys({}, None, saved) == {"admin": "A", "ingest": "I", "profile": "P"}
    env = {"AUDIENCES_INGEST_KEY": "env-ingest"}
    assert resolve_keys(env, None, saved)["ingest"] == "env-ingest"
    assert set(resolve_keys(env, "one", saved).values()) == {"one"}
    assert set(resolve_keys({"AUDIENCES_KEY": "all"}, None, saved).values()) == {"all"}
    assert resolve_keys({}, None, tmp_path / "absent.json")["admin"] is None


def test_a_missing_key_says_where_keys_come_from() -> None:
    connection = Connection({}, {"admin": None})
    with pytest.raises(ConfigError, match="AUDIENCES_ADMIN_KEY"):
        connection.metadata("admin")
    assert Connection({}, {"admin": "k"}).metadata("admin") == (("authorization", "Bearer k"),)
