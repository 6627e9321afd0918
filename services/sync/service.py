"""The sync use cases: destinations and syncs (validated, workspace-scoped), runs and
exports. The servicer calls these; they call the store, the read model and the runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from services.shared.clock import Clock
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, invalid
from services.sync import export
from services.sync.destinations import TYPES
from services.sync.export import ExportPiece
from services.sync.model import (
    AMPLITUDE,
    AUDIENCE,
    EVENTS,
    ID_TYPE,
    PERIOD_US,
    Destination,
    DestinationInput,
    Run,
    Sync,
    SyncInput,
    check_destination,
    check_sync,
)
from services.sync.readmodel import ChangeLog
from services.sync.runner import SyncRunner
from services.sync.store import SyncStore
from services.sync.values import ValueReader

DEFAULT_PAGE = 100
MAX_PAGE = 1_000


def page_size(requested: int, field: str = "page_size") -> int:
    """The page size to use: the default for 0, INVALID_ARGUMENT outside 0..1000."""
    if requested < 0 or requested > MAX_PAGE:
        raise invalid(field, f"must be between 0 and {MAX_PAGE}")
    return requested or DEFAULT_PAGE


def _check(given: DestinationInput, creating: bool) -> None:
    """The common rules of a destination, then its type's rules for its options."""
    check_destination(given, creating)
    problems = TYPES[given.kind].check_options(given.options)
    if problems:
        raise InvalidArgument(
            "invalid destination: " + "; ".join(f"{p.field} {p.description}" for p in problems),
            problems,
        )


class SyncService:
    """Destinations, syncs, runs and exports of the caller's workspace."""

    def __init__(
        self, store: SyncStore, changelog: ChangeLog, runner: SyncRunner, clock: Clock
    ) -> None:
        self._store = store
        self._changelog = changelog
        self._runner = runner
        self._clock = clock
        self._values = ValueReader(changelog.engine)

    # ----------------------------------------------------------------- destinations

    async def create_destination(self, ws: str, given: DestinationInput) -> Destination:
        """Validate and store a destination."""
        _check(given, creating=True)
        return await self._store.create_destination(ws, given, self._clock.now_us())

    async def get_destination(self, ws: str, destination_id: str) -> Destination:
        """The destination; NotFound when the workspace has none with that id."""
        found = await self._store.get_destination(ws, destination_id)
        if found is None:
            raise NotFound(f"destination {destination_id} not found")
        return found

    async def list_destinations(
        self, ws: str, after_id: str, limit: int
    ) -> tuple[list[Destination], str]:
        """A page of destinations and the token of the next ('' at the end)."""
        size = page_size(limit)
        found = await self._store.list_destinations(ws, after_id, size + 1)
        return found[:size], found[size - 1].id if len(found) > size else ""

    async def update_destination(
        self, ws: str, dest_id: str, given: DestinationInput
    ) -> Destination:
        """Replace a destination's settings; its kind cannot change, an empty secret
        keeps the stored one."""
        current = await self.get_destination(ws, dest_id)
        if given.kind and given.kind != current.kind:
            raise invalid("destination.kind", "cannot change; create a new destination")
        given = replace(given, kind=current.kind)
        _check(given, creating=False)
        await self._store.update_destination(ws, dest_id, given, self._clock.now_us())
        return await self.get_destination(ws, dest_id)

    async def delete_destination(self, ws: str, destination_id: str) -> None:
        """Delete a destination no sync uses."""
        await self.get_destination(ws, destination_id)
        if await self._store.destination_in_use(ws, destination_id):
            raise FailedPrecondition(
                f"destination {destination_id} is used by a sync; delete the sync first"
            )
        await self._store.delete_destination(ws, destination_id)

    # ----------------------------------------------------------------------- syncs

    async def create_sync(self, ws: str, given: SyncInput) -> Sync:
        """Validate and store a sync of an existing audience to an existing destination."""
        check_sync(given)
        destination = await self._store.get_destination(ws, given.destination_id)
        if destination is None:
            raise invalid("sync.destination_id", f"no destination {given.destination_id}")
        problem = TYPES[destination.kind].check_id_type(given.id_type)
        if problem is not None:
            raise invalid("sync.id_type", problem)
        if given.source in (AUDIENCE, EVENTS):
            # An event sync's source_key, when set, limits it to an audience's members.
            if (given.source == AUDIENCE or given.source_key) and (
                await self._changelog.audience_id(ws, given.source_key) is None
            ):
                raise invalid("sync.source_key", f"no audience {given.source_key}")
        else:
            if destination.kind == AMPLITUDE:
                raise invalid("sync.source", "Amplitude cohorts hold audiences only")
            if not await self._values.exists(ws, given.source, given.source_key):
                raise invalid(
                    "sync.source_key", f"no {given.source.replace('_', ' ')} {given.source_key}"
                )
        return await self._store.create_sync(ws, given, self._clock.now_us())

    async def get_sync(self, ws: str, sync_id: str) -> Sync:
        """The sync; NotFound when the workspace has none with that id."""
        found = await self._store.get_sync(ws, sync_id)
        if found is None:
            raise NotFound(f"sync {sync_id} not found")
        return found

    async def list_syncs(self, ws: str, after_id: str, limit: int) -> tuple[list[Sync], str]:
        """A page of syncs and the token of the next ('' at the end)."""
        size = page_size(limit)
        found = await self._store.list_syncs(ws, after_id, size + 1)
        return found[:size], found[size - 1].id if len(found) > size else ""

    async def update_sync(self, ws: str, sync_id: str, given: SyncInput) -> Sync:
        """Change a sync's cadence, guardrail share or paused state. Its destination,
        audience and id type are fixed (a new one would need a new backfill). Resuming
        a sync the guardrail paused approves the removals it held back."""
        current = await self.get_sync(ws, sync_id)
        fixed = {
            "sync.destination_id": (given.destination_id, current.destination_id),
            "sync.source_key": (given.source_key, current.source_key),
            "sync.id_type": (given.id_type, current.id_type),
        }
        for field, (asked, stored) in fixed.items():
            if asked and asked != stored:
                raise invalid(field, "cannot change; create a new sync")
        # Fixed too (what the destination holds was chosen with it); a bool cannot say
        # "unset", so only asking to turn it on is refused.
        if given.exclude_holdout and not current.exclude_holdout:
            raise invalid("sync.exclude_holdout", "cannot change; create a new sync")
        if given.item_metadata and not current.item_metadata:
            raise invalid("sync.item_metadata", "cannot change; create a new sync")
        # An audience sync remembers whom it sent only with the activity filter on, so
        # turning it on or off would lose track of whose exits to send; N may change.
        if current.source == AUDIENCE and (
            bool(given.active_within_days) != bool(current.active_within_days)
        ):
            raise invalid(
                "sync.active_within_days",
                "cannot be turned on or off for an audience sync; create a new sync",
            )
        given = replace(
            given,
            destination_id=current.destination_id,
            source=current.source,
            source_key=current.source_key,
            id_type=current.id_type,
            cadence=given.cadence or current.cadence,
            event_types=current.event_types,
            event_names=current.event_names,
            exclude_holdout=current.exclude_holdout,
            item_metadata=current.item_metadata,
        )
        check_sync(given)
        now = self._clock.now_us()
        values: dict[str, object] = {
            "cadence": given.cadence,
            "max_removal_fraction": given.max_removal_fraction or current.max_removal_fraction,
            "paused": given.paused,
            "active_within_days": given.active_within_days,
        }
        if given.cadence != current.cadence:
            values["next_run_at_us"] = now if given.cadence in PERIOD_US else None
        if current.paused and not given.paused:
            values["paused_reason"] = ""
            values["removal_approved"] = bool(current.paused_reason)
        await self._store.update_sync(ws, sync_id, values, now)
        return await self.get_sync(ws, sync_id)

    async def delete_sync(self, ws: str, sync_id: str) -> None:
        """Delete the sync with its runs."""
        if not await self._store.delete_sync(ws, sync_id):
            raise NotFound(f"sync {sync_id} not found")

    async def run_sync(self, ws: str, sync_id: str) -> Run:
        """Run the sync now (see runner.SyncRunner.run)."""
        return await self._runner.run(ws, sync_id)

    async def redrive(self, ws: str, sync_id: str, dead_letter_ids: list[str]) -> Run:
        """Send the sync's dead letters again (see runner.SyncRunner.redrive)."""
        return await self._runner.redrive(ws, sync_id, dead_letter_ids)

    async def list_runs(
        self, ws: str, sync_id: str, before_id: str, limit: int
    ) -> tuple[list[Run], str]:
        """A page of the sync's runs, newest first, and the token of the next."""
        await self.get_sync(ws, sync_id)
        size = page_size(limit)
        found = await self._store.list_runs(ws, sync_id, before_id, size + 1)
        return found[:size], found[size - 1].id if len(found) > size else ""

    # ---------------------------------------------------------------------- export

    async def export(
        self, ws: str, audience_key: str, fmt: str, id_type: str, raw: bool
    ) -> tuple[int, AsyncIterator[export.ExportPiece]]:
        """The audience's member count and its CSV in `fmt`, in chunks."""
        problems = []
        if fmt not in (export.UNFORMATTED, export.FORMATTED, export.SINGLE_COLUMN):
            problems.append(invalid("format", "must be unformatted, formatted or single_column"))
        if fmt == export.SINGLE_COLUMN and not ID_TYPE.match(id_type):
            problems.append(invalid("id_type", "is required for a single-column export"))
        if problems:
            raise InvalidArgument(
                "; ".join(p.message for p in problems), [v for p in problems for v in p.violations]
            )
        audience_id = await self._changelog.audience_id(ws, audience_key)
        if audience_id is None:
            raise NotFound(f"audience {audience_key} not found")
        total = await self._changelog.member_count(ws, audience_id)
        return total, self._export_pieces(ws, audience_id, fmt, id_type, raw)

    async def _export_pieces(
        self, ws: str, audience_id: int, fmt: str, id_type: str, raw: bool
    ) -> AsyncIterator[ExportPiece]:
        # Postgres formats the lines itself (raw single-column values excepted: their
        # CSV quoting is left to the csv module); elsewhere Python formats them.
        if not (fmt == export.SINGLE_COLUMN and raw):
            async with self._changelog.export_lines(ws, audience_id, fmt, id_type) as copied:
                if copied is not None:
                    widths, lines = copied
                    header = export.header_line(fmt, widths, id_type, raw)
                    async for piece in export.framed_csv(lines, fmt, header):
                        yield piece
                    return
        widths = (
            await self._changelog.id_type_widths(ws, audience_id) if fmt == export.FORMATTED else {}
        )
        members = self._changelog.member_identifiers(ws, audience_id)
        async for piece in export.export_csv(members, fmt, widths, id_type, raw):
            yield piece
