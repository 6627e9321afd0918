"""Operator commands: they reach the database directly, as `python -m
services.shared.cli` does, not through the services."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, TypeVar

import typer

from audiences_cli.app import (
    app,
    examples,
)
from audiences_cli.render import (
    err,
)

T = TypeVar("T")


# --- operator commands (database, not gRPC) ------------------------------------------


@app.command(
    epilog=examples("audiences migrate", "DATABASE_URL=postgresql+asyncpg://... audiences migrate")
)
def migrate(
    down: Annotated[bool, typer.Option("--down", help="Roll every migration back.")] = False,
) -> None:
    """Apply the database migrations to DATABASE_URL (the embedded SQLite file by default)."""
    from services.shared.cli import run_migrate
    from services.shared.config import Settings

    asyncio.run(run_migrate(Settings.from_env(), down))
    err.print("migrations rolled back" if down else "migrations applied")


@app.command(
    "create-workspace", epilog=examples("audiences create-workspace acme > acme-keys.json")
)
def create_workspace(name: str) -> None:
    """Create a workspace in DATABASE_URL with an admin, an ingest and a profile-read key
    (printed once as JSON: keys are stored hashed)."""
    from services.shared.cli import create_workspace as create
    from services.shared.config import Settings

    print(json.dumps(asyncio.run(create(Settings.from_env(), name)), indent=2))
