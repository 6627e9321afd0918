"""Operator commands the ingest service owns, run from its own package (the same image
and settings as the service, no server started):

    python -m services.ingest rebuild-hot-state --workspace WS

The shared `audiences` CLI imports no service (docs/decisions.md, "Independent
services"), so work on state a service owns is that service's command.
"""

from __future__ import annotations

import argparse
import asyncio

from services.ingest.publisher import RedisPublisher, rebuild_workspace
from services.ingest.store import SqlEventStore
from services.shared.config import Settings
from services.shared.db.engine import create_engine
from services.shared.redis import create_redis


async def rebuild_hot_state(settings: Settings, workspace_id: str) -> int:
    """Recreate a workspace's hot identifiers, traits and meta in Redis from Postgres;
    returns how many profiles were written."""
    engine = create_engine(settings.database_url)
    redis = create_redis(settings.redis_url)
    try:
        return await rebuild_workspace(
            SqlEventStore(engine), redis, RedisPublisher(redis), workspace_id
        )
    finally:
        await redis.aclose()
        await engine.dispose()


def main(argv: list[str]) -> int:
    """Run one operator command (`argv` without the program name); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m services.ingest", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild = commands.add_parser(
        "rebuild-hot-state",
        help="recreate a workspace's hot identifiers, traits and meta from Postgres",
    )
    rebuild.add_argument("--workspace", required=True)
    args = parser.parse_args(argv)
    count = asyncio.run(rebuild_hot_state(Settings.from_env(), args.workspace))
    print(f"rebuilt the hot state of {count} profiles")
    return 0
