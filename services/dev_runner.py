"""Start all five services: in one process (`make run`) or as five processes (tests).

`python -m services.dev_runner` runs them in this process on their fixed ports with
the embedded default (SQLite file + in-process Redis) unless DATABASE_URL/REDIS_URL
say otherwise, creates a demo workspace on first start, and prints an example call.
It also gives the services an operator credential (OPERATOR_TOKEN, which CreateWorkspace
needs): the environment's if set, else one generated on first start and kept in
var/operator-token, printed in the banner.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from services.ingest.app import SPEC as INGEST
from services.prediction.app import SPEC as PREDICTION
from services.profile.app import SPEC as PROFILE
from services.segmentation.app import SPEC as SEGMENTATION
from services.shared.cli import create_workspace
from services.shared.config import Settings
from services.shared.server import ServiceSpec, run, serve
from services.shared.telemetry import configure_logging
from services.sync.app import SPEC as SYNC

SPECS: list[ServiceSpec] = [INGEST, SEGMENTATION, PREDICTION, PROFILE, SYNC]
DEMO_KEYS = Path("var/demo-workspace.json")
OPERATOR_TOKEN_FILE = Path("var/operator-token")


def start_processes(env: dict[str, str], ports: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """Start each service as its own `python -m services.<name>` process on `ports`."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**env, "GRPC_PORT": str(port)},
        )
        for name, port in ports.items()
    ]


def _saved_demo_keys() -> dict[str, str] | None:
    # Secrets are stored hashed, so the demo keys are kept in var/ (git-ignored) to be
    # shown again on the next start.
    return json.loads(DEMO_KEYS.read_text()) if DEMO_KEYS.exists() else None


def _save_demo_keys(keys: dict[str, str]) -> None:
    DEMO_KEYS.parent.mkdir(parents=True, exist_ok=True)
    DEMO_KEYS.write_text(json.dumps(keys, indent=2))


def operator_token() -> str:
    """OPERATOR_TOKEN from the environment, else the one kept in var/ (made on first use)."""
    if os.environ.get("OPERATOR_TOKEN"):
        return os.environ["OPERATOR_TOKEN"]
    if not OPERATOR_TOKEN_FILE.exists():
        OPERATOR_TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        OPERATOR_TOKEN_FILE.touch(mode=0o600)
        OPERATOR_TOKEN_FILE.write_text(secrets.token_urlsafe(32))
    return OPERATOR_TOKEN_FILE.read_text().strip()


def listen_ports(settings: Settings) -> dict[str, int]:
    """Each service's port: the one in its <SERVICE>_ADDR, else its fixed default, so the
    address peers dial is the address the service listens on."""
    return {
        name: int(address.rsplit(":", 1)[1]) for name, address in settings.peer_addresses.items()
    }


def _banner(keys: dict[str, str], ports: dict[str, int], operator: str) -> str:
    listing = "\n".join(f"  {name:<13} 127.0.0.1:{port}" for name, port in ports.items())
    return f"""
Audiences is running (embedded default unless DATABASE_URL/REDIS_URL are set):
{listing}

Demo workspace {keys["workspace_id"]}
  admin key   {keys["admin_key"]}
  ingest key  {keys["ingest_key"]}
  profile key {keys["profile_key"]}

Operator token (CreateWorkspace; kept in var/operator-token unless OPERATOR_TOKEN is set)
  {operator}

Try it: the five-minute tour in README.md (real gRPC calls from .venv/bin/python).

Ctrl-C stops every service (in-flight calls are drained first).
"""


async def _run_all() -> None:
    settings = dataclasses.replace(Settings.from_env(), operator_token=operator_token())
    keys = _saved_demo_keys()
    if keys is None:
        keys = await create_workspace(settings, "demo")
        _save_demo_keys(keys)
    ports = listen_ports(settings)
    print(_banner(keys, ports, settings.operator_token or ""), flush=True)
    await serve(SPECS, settings, ports)


def main() -> None:
    configure_logging()
    if "--processes" in sys.argv:
        env = {**os.environ, "OPERATOR_TOKEN": operator_token()}
        processes = start_processes(env, listen_ports(Settings.from_env()))
        try:
            for process in processes:
                process.wait()
        except KeyboardInterrupt:
            for process in processes:
                process.terminate()
        return
    run(_run_all())


if __name__ == "__main__":
    main()
