"""Running syncs and reading their runs."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import typer
from audiences.v1 import (
    sync_pb2,
)

from audiences_cli.app import (
    Failure,
    Output,
    State,
    call,
    check_output,
    examples,
    sync_app,
)
from audiences_cli.commands.objects import find_sync
from audiences_cli.render import (
    emit,
)

T = TypeVar("T")


# --- syncs ----------------------------------------------------------------------------------


def _run_row(r: sync_pb2.SyncRun) -> dict[str, Any]:
    return {
        "run": r.id,
        "status": r.status,
        "added": r.added,
        "removed": r.removed,
        "skipped": r.skipped,
        "failed": r.failed,
        "batches": r.batches,
        "retries": r.retries,
        "ms": r.duration_ms,
        "error": r.error,
    }


@sync_app.command(
    "run",
    epilog=examples("audiences sync run tour_files/loyal_pro", "audiences sync run 2f0c7a3e-..."),
)
def sync_run(
    sync: Annotated[str, typer.Argument(help="Sync id or DESTINATION/SOURCE_KEY.")],
    output: Output = "table",
) -> None:
    """Run a sync now: deliver the changes since its cursor (the first run: every member)."""
    check_output(output)
    found = find_sync(sync)
    run = call(
        State.connection().sync().RunSync,
        sync_pb2.RunSyncRequest(id=found.id),
        "admin",
        f"run sync {sync}",
    )
    emit([_run_row(run)], output)
    if run.status not in ("succeeded", "running"):
        raise Failure


@sync_app.command("runs", epilog=examples("audiences sync runs tour_files/loyal_pro"))
def sync_runs(
    sync: Annotated[str, typer.Argument(help="Sync id or DESTINATION/SOURCE_KEY.")],
    output: Output = "table",
) -> None:
    """The runs of a sync, newest first."""
    check_output(output)
    found = find_sync(sync)
    reply = call(
        State.connection().sync().ListSyncRuns,
        sync_pb2.ListSyncRunsRequest(sync_id=found.id, page_size=50),
        "admin",
        f"runs of {sync}",
    )
    emit([_run_row(r) for r in reply.runs], output)
