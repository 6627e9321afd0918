"""Recreating the hot state in Redis from the database, the source of truth.

Each service rebuilds its own share (ServiceSpec.rebuild_hot_state: ingest the
identifiers, traits and merges; segmentation the memberships and computed values);
this module runs them for every workspace, or the ones asked for, and reports
progress. The dev runner calls it at every start of the embedded default, whose store
starts empty; `python -m services.<name> rebuild-hot-state [--workspace WS ...]` runs
one service's share against the Redis of REDIS_URL (or the running embedded store),
which is the one the services read. The shared `audiences` CLI imports no service, so
it has no such command (docs/decisions.md, "Independent services").
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError

from services.shared.config import Settings
from services.shared.server import Resources, ServiceSpec

# A progress line per service at most this often, so a large workspace shows it is
# moving without printing a line per page.
PROGRESS_INTERVAL_SECONDS = 2.0


async def rebuild_hot_state(
    specs: Sequence[ServiceSpec],
    resources: Resources,
    say: Callable[[str], None],
    workspace_ids: Sequence[str] | None = None,
) -> int:
    """Rebuild the hot state of `workspace_ids` (default: every workspace) with every
    spec's hook, saying what happens through `say`; returns how many workspaces."""
    started = time.monotonic()
    chosen = list(workspace_ids) if workspace_ids else await resources.keys.workspace_ids()
    rebuilders = [(spec.name, spec.rebuild_hot_state) for spec in specs if spec.rebuild_hot_state]
    say(f"rebuilding the hot state of {len(chosen)} workspace(s) from the database")
    for workspace_id in chosen:
        for name, rebuild in rebuilders:
            label = f"  {workspace_id} {name}"
            last_said = time.monotonic()

            def progress(done: str, label: str = label) -> None:
                nonlocal last_said
                if time.monotonic() - last_said >= PROGRESS_INTERVAL_SECONDS:
                    last_said = time.monotonic()
                    say(f"{label}: {done} so far")

            summary = await rebuild(resources, workspace_id, progress)
            say(f"{label}: {summary}")
    say(f"hot state rebuilt in {time.monotonic() - started:.1f} s")
    return len(chosen)


def command(spec: ServiceSpec, argv: Sequence[str]) -> int:
    """`python -m services.<name> rebuild-hot-state [--workspace WS ...]`: rebuild the
    service's share of the hot state; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{spec.name}",
        description=f"Recreate the {spec.name} service's share of the hot state from the database.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild = commands.add_parser("rebuild-hot-state", help="rebuild from the database")
    rebuild.add_argument(
        "--workspace",
        action="append",
        default=[],
        help="a workspace id (repeatable); every workspace when omitted",
    )
    args = parser.parse_args(list(argv))
    if spec.rebuild_hot_state is None:
        print(f"the {spec.name} service keeps no hot state of its own")
        return 0
    return asyncio.run(_rebuild_one(spec, Settings.from_env(), args.workspace))


async def _rebuild_one(spec: ServiceSpec, settings: Settings, workspace_ids: list[str]) -> int:
    resources = await Resources.open(settings, spec.name)
    try:
        try:
            await resources.redis.ping()
        except RedisConnectionError:
            print(_unreachable(settings))
            return 1
        await rebuild_hot_state(
            [spec], resources, lambda line: print(line, flush=True), workspace_ids
        )
        return 0
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
