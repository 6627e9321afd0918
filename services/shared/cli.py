"""Operator commands: `audiences migrate`, `audiences create-workspace NAME`,
`audiences lift-chart AUDIENCE --key KEY --out lift.png` (services/shared/lift_chart.py).
(A service's share of the hot state is rebuilt by that service's own command:
`python -m services.<name> rebuild-hot-state [--workspace WS ...]`.)

Run as `python -m services.shared.cli ...`, or as `audiences migrate` and `audiences
create-workspace` of the console script (audiences_cli/), which call these functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from services.shared import lift_chart
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audiences", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    migrate_cmd = commands.add_parser("migrate", help="apply migrations to DATABASE_URL")
    migrate_cmd.add_argument("--down", action="store_true", help="roll back every migration")
    workspace_cmd = commands.add_parser("create-workspace", help="create a workspace and keys")
    workspace_cmd.add_argument("name")
    lift_chart.add_command(commands)
    args = parser.parse_args(argv)
    if args.command == "lift-chart":
        report = asyncio.run(lift_chart.fetch(args.address, args.key, args.audience, args.days))
        lift_chart.render(report, args.out)
        print(f"wrote {args.out}")
        return 0
    settings = Settings.from_env()
    if args.command == "migrate":
        asyncio.run(run_migrate(settings, args.down))
        print("migrations applied" if not args.down else "migrations rolled back")
    elif args.command == "create-workspace":
        print(json.dumps(asyncio.run(create_workspace(settings, args.name)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
