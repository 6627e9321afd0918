"""File destinations: one file per run in the destination's directory, CSV or JSON
Lines, written under a temporary name and renamed into place when the run finishes,
so a reader never sees half a file and a failed run leaves none.

Name: ``<sync id>-<run id>.<csv|jsonl>``. Columns (CSV header, JSON keys): seq, action
(added or removed), profile_id, id, at_us; computed trait and prediction syncs add
value (JSON text in a CSV).
"""

from __future__ import annotations

import asyncio
import csv
import os
from typing import IO

import orjson

from services.sync.destinations.base import (
    Batch,
    DestinationRun,
    Outcome,
    RunContext,
    any_id_type,
    no_options,
)
from services.sync.model import AUDIENCE, EVENTS, Destination

COLUMNS = ("seq", "action", "profile_id", "id", "at_us")
VALUE_COLUMNS = (*COLUMNS, "value")
EVENT_COLUMNS = (
    "seq",
    "message_id",
    "type",
    "name",
    "profile_id",
    "id",
    "timestamp_us",
    "properties",
    "traits",
)


class _FileRun:
    acknowledges_each_batch = False

    def __init__(self, destination: Destination, context: RunContext) -> None:
        self._format = destination.file_format
        name = f"{context.sync_id}-{context.run_id}.{self._format}"
        self._path = os.path.join(destination.directory, name)
        self._partial = os.path.join(destination.directory, f".{name}.partial")
        self._file: IO[str] | None = None
        self._columns = {AUDIENCE: COLUMNS, EVENTS: EVENT_COLUMNS}.get(
            context.source, VALUE_COLUMNS
        )

    def _open(self) -> IO[str]:
        if self._file is None:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            self._file = open(self._partial, "w", newline="", encoding="utf-8")
            if self._format == "csv":
                csv.writer(self._file).writerow(self._columns)
        return self._file

    def _write(self, batch: Batch) -> None:
        file = self._open()
        rows = [e.as_json() for e in batch.events] + [c.as_json() for c in batch.changes]
        if self._format == "csv":
            writer = csv.writer(file)
            for row in rows:
                for name in ("value", "properties", "traits"):
                    if name in row:
                        row[name] = orjson.dumps(row[name]).decode()
                writer.writerow([row[c] for c in self._columns])
        else:
            for row in rows:
                file.write(orjson.dumps(row).decode() + "\n")

    async def deliver(self, batch: Batch) -> Outcome:
        await asyncio.to_thread(self._write, batch)
        return Outcome()

    def _publish(self) -> None:
        file = self._open()  # a run without changes still leaves its (empty) file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(self._partial, self._path)

    async def finish(self) -> None:
        await asyncio.to_thread(self._publish)

    async def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            await asyncio.to_thread(_unlink, self._partial)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class FileType:
    check_options = staticmethod(no_options)
    check_id_type = staticmethod(any_id_type)
    """Opens file runs."""

    def open_run(self, destination: Destination, context: RunContext) -> DestinationRun:
        """A run writing one file into the destination's directory."""
        return _FileRun(destination, context)


TYPE = FileType()
