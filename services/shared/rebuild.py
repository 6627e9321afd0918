"""Recreating the hot state in Redis from the database, the source of truth.

Each service rebuilds its own share (ServiceSpec.rebuild_hot_state: ingest the
identifiers, traits and merges; segmentation the memberships and computed values);
this module runs them for every workspace, or the ones asked for, and reports
progress. The dev runner calls it at every start of the embedded default, whose store
starts empty; `audiences rebuild-hot-state` calls it against the Redis of REDIS_URL
(or the running embedded store), which is the one the services read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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
