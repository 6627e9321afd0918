"""Operator commands: `audiences migrate`, `audiences create-workspace NAME`,
`audiences rebuild-hot-state [--workspace WS ...]`.

Run as `python -m services.shared.cli ...` or the `audiences` console script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError

from services.shared.auth import KeyStore
from services.shared.config import Settings
from services.shared.db import migrate
from services.shared.db.engine import create_engine


def _ensure_sqlite_folder(database_url: str) -> None:
    # sqlite+aiosqlite:///var/audiences.db -> create ./var so SQLite can make the file.
    if database_url.startswith("sqlite") and ":///" in database_url:
        path = database_url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


async def run_migrate(settings: Settings, down: bool) -> None:
    """Apply every migration head (or roll everything back with down)."""
    _ensure_sqlite_folder(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        await (migrate.downgrade(engine) if down else migrate.upgrade(engine))
    finally:
        await engine.dispose()


async def create_workspace(settings: Settings, name: str) -> dict[str, str]:
    """Create a workspace with an admin, an ingest and a profile-read key."""
    engine = create_engine(settings.database_url)
    try:
        keys = KeyStore(engine)
        workspace_id, _, admin_secret = await keys.create_workspace(name)
        _, ingest_secret = await keys.create_key(workspace_id, "ingest", ["ingest:write"])
        _, profile_secret = await keys.create_key(workspace_id, "profile", ["profile:read"])
    finally:
        await engine.dispose()
    return {
        "workspace_id": workspace_id,
        "admin_key": admin_secret,
        "ingest_key": ingest_secret,
        "profile_key": profile_secret,
    }


async def rebuild_hot_state(settings: Settings, workspace_ids: list[str]) -> int:
    """Recreate the hot state of `workspace_ids` (every workspace when empty) in the Redis
    the services read (REDIS_URL, or the embedded store of a running `make run`) from the
    database; returns how many workspaces were rebuilt."""
    # Imported here: each service owns its share of the rebuild (ServiceSpec), and the
    # other commands should not pay for importing all five.
    from services.dev_runner import SPECS
    from services.shared.rebuild import rebuild_hot_state as rebuild
    from services.shared.server import Resources

    resources = await Resources.open(settings)
    try:
        try:
            await resources.redis.ping()
        except RedisConnectionError:
            raise SystemExit(_unreachable(settings)) from None
        return await rebuild(SPECS, resources, print, workspace_ids)
    finally:
        await resources.close()


def _unreachable(settings: Settings) -> str:
    if settings.embedded_redis_address is not None:
        return (
            f"cannot reach the embedded store on {settings.embedded_redis_address}: it runs "
            "inside `make run` (which rebuilds the hot state itself at start); start that "
            "first, or set REDIS_URL"
        )
    return "cannot reach Redis at REDIS_URL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiences", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    migrate_cmd = commands.add_parser("migrate", help="apply migrations to DATABASE_URL")
    migrate_cmd.add_argument("--down", action="store_true", help="roll back every migration")
    workspace_cmd = commands.add_parser("create-workspace", help="create a workspace and keys")
    workspace_cmd.add_argument("name")
    rebuild_cmd = commands.add_parser(
        "rebuild-hot-state",
        help="recreate the hot state (profiles, memberships, computed values) from the database",
    )
    rebuild_cmd.add_argument(
        "--workspace",
        action="append",
        default=[],
        help="a workspace id (repeatable); every workspace when omitted",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "migrate":
        asyncio.run(run_migrate(settings, args.down))
        print("migrations applied" if not args.down else "migrations rolled back")
    elif args.command == "create-workspace":
        print(json.dumps(asyncio.run(create_workspace(settings, args.name)), indent=2))
    elif args.command == "rebuild-hot-state":
        asyncio.run(rebuild_hot_state(settings, args.workspace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
