"""Start all five services and the realtime worker: in one process (`make run`) or as
separate processes.

`python -m services.dev_runner` runs them in this process on their fixed ports with
the embedded default (SQLite file + a Redis-compatible store served on a loopback
port) unless DATABASE_URL/REDIS_URL say otherwise, creates a demo workspace on first
start, and prints the ports and keys. On the embedded default it first rebuilds the
hot state from the database, so every profile, audience and membership is readable
again after any restart, a crash included. It also gives the services an operator
credential (OPERATOR_TOKEN, which CreateWorkspace needs): the environment's if set, else
one generated on first start and kept in var/operator-token, printed in the banner;
and the sync service's key for destination secrets (SYNC_SECRET_KEY) the same way, kept
in var/sync-secret-key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.ingest.app import SPEC as INGEST
from services.ingest.app import http_port as ingest_http_port
from services.prediction.app import SPEC as PREDICTION
from services.profile.app import SPEC as PROFILE
from services.profile.app import http_port as profile_http_port
from services.segmentation.app import EMBEDDED_SPEC as SEGMENTATION_WITH_REALTIME
from services.segmentation.app import REALTIME_MODULE, REALTIME_PORT
from services.segmentation.app import SPEC as SEGMENTATION
from services.shared.cli import create_workspace
from services.shared.config import Settings
from services.shared.rebuild import rebuild_hot_state
from services.shared.redis import EmbeddedRedis
from services.shared.server import Resources, ServiceSpec, run, serve
from services.shared.telemetry import configure_logging
from services.sync.app import SPEC as SYNC

SPECS: list[ServiceSpec] = [INGEST, SEGMENTATION, PREDICTION, PROFILE, SYNC]
# What `make run` serves in one process: the five, with the realtime worker running
# beside the segmentation service.
EMBEDDED_SPECS: list[ServiceSpec] = [
    SEGMENTATION_WITH_REALTIME if spec is SEGMENTATION else spec for spec in SPECS
]
OPERATOR_TOKEN_FILE = Path("var/operator-token")
SYNC_SECRET_KEY_FILE = Path("var/sync-secret-key")
DEMO_KEYS = Path("var/demo-workspace.json")


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


def sync_secret_key() -> str:
    """SYNC_SECRET_KEY from the environment, else a Fernet key kept in var/ (made on
    first use), so destination secrets stored by one `make run` open in the next."""
    if os.environ.get("SYNC_SECRET_KEY"):
        return os.environ["SYNC_SECRET_KEY"]
    if not SYNC_SECRET_KEY_FILE.exists():
        SYNC_SECRET_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        SYNC_SECRET_KEY_FILE.touch(mode=0o600)
        # A Fernet key is 32 random bytes in urlsafe base64.
        SYNC_SECRET_KEY_FILE.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
    return SYNC_SECRET_KEY_FILE.read_text().strip()


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


def _banner(keys: dict[str, str], ports: dict[str, int], settings: Settings) -> str:
    notes = {
        "ingest": f"(+ AdminService; Segment-compatible HTTP on :{ingest_http_port()})",
        "profile": f"(read-only HTTP JSON view on :{profile_http_port()})",
        "sync": "(webhook, file, Braze, Amplitude destinations; CSV export)",
    }
    listing = "\n".join(
        f"  {name:<13} 127.0.0.1:{port:<6} {notes.get(name, '')}".rstrip()
        for name, port in ports.items()
    )
    store = settings.embedded_redis_address
    hot_state = f"embedded Redis-compatible store on {store}" if store else "Redis at REDIS_URL"
    return f"""
Audiences is running (embedded default unless DATABASE_URL/REDIS_URL are set):
{listing}
  hot state     {hot_state}

Demo workspace {keys["workspace_id"]}
  admin key   {keys["admin_key"]}
  ingest key  {keys["ingest_key"]}
  profile key {keys["profile_key"]}

Operator token (CreateWorkspace; kept in var/operator-token unless OPERATOR_TOKEN is set)
  {settings.operator_token or ""}

Try it (in another terminal, from the project root; the CLI finds these keys in var/):
  .venv/bin/audiences demo load --profiles 2000    # or: make demo
  .venv/bin/audiences apply -f examples/definitions/
  .venv/bin/audiences profile user_id:user-1-3
and the five-minute tour in README.md; `.venv/bin/audiences --help` lists the rest.

Ctrl-C stops every service (in-flight calls are drained first).
"""


@contextmanager
def embedded_store(settings: Settings) -> Iterator[None]:
    """Serve the embedded Redis-compatible store while inside, when REDIS_URL is unset."""
    if settings.embedded_redis_address is None:
        yield
        return
    store = EmbeddedRedis(settings.embedded_redis_address).start()
    try:
        yield
    finally:
        store.close()


async def _rebuild(resources: Resources) -> None:
    """The embedded store starts empty: fill it from the database before serving."""
    if resources.settings.embedded_redis_address is not None:
        await rebuild_hot_state(SPECS, resources, lambda line: print(line, flush=True))


async def _run_all(settings: Settings) -> None:
    keys = _saved_demo_keys()
    if keys is None:
        keys = await create_workspace(settings, "demo")
        _save_demo_keys(keys)
    ports = listen_ports(settings)

    async def prepare(resources: Resources) -> None:
        await _rebuild(resources)
        print(_banner(keys, ports, settings), flush=True)

    await serve(EMBEDDED_SPECS, settings, ports, before_start=prepare)


async def _rebuild_only(settings: Settings) -> None:
    resources = await Resources.open(settings)
    try:
        await _rebuild(resources)
    finally:
        await resources.close()


def main() -> None:
    configure_logging()
    settings = dataclasses.replace(Settings.from_env(), operator_token=operator_token())
    # The sync service reads its key from the environment, in this process or a child.
    os.environ["SYNC_SECRET_KEY"] = sync_secret_key()
    with embedded_store(settings):
        if "--processes" not in sys.argv:
            run(_run_all(settings))
            return
        run(_rebuild_only(settings))
        # SIGTERM stops the children as Ctrl-C does, so none outlives this process.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        env = {**os.environ, "OPERATOR_TOKEN": operator_token()}
        processes = start_processes(env, listen_ports(settings))
        # The realtime worker as its own process, its health on its own port.
        processes += start_processes(env, {REALTIME_MODULE: REALTIME_PORT})
        try:
            for process in processes:
                process.wait()
        except KeyboardInterrupt:
            for process in processes:
                process.terminate()
            # They drain while the embedded store they write to still serves.
            for process in processes:
                process.wait()


if __name__ == "__main__":
    main()
