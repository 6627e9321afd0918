"""Printing: tables, JSON and YAML for objects, and server errors made readable."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from audiences.v1 import common_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from audiences_cli.resources import dump_yaml
from services.shared.errors import field_violations

FORMATS = ("table", "json", "yaml")
# Data on stdout (pipeable); messages, progress and errors on stderr.
# Piped output is not cut to 80 columns: tables keep whole ids and timestamps.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def emit(rows: Sequence[dict[str, Any]], output: str, columns: Sequence[str] = ()) -> None:
    """Print rows as a table (the given columns, else every key), JSON or YAML."""
    if output == "json":
        out.print_json(json.dumps(list(rows), default=str))
    elif output == "yaml":
        out.print(dump_yaml(list(rows)), end="", markup=False, highlight=False)
    else:
        names = list(columns) or list(dict.fromkeys(k for row in rows for k in row))
        table = Table(*names, show_lines=False)
        for row in rows:
            table.add_row(*(cell(row.get(name)) for name in names))
        out.print(table)


def emit_one(value: dict[str, Any], output: str) -> None:
    """Print one object: YAML for people (also as `table`), or JSON."""
    if output == "json":
        out.print_json(json.dumps(value, default=str))
    else:
        out.print(dump_yaml(value), end="", markup=False, highlight=False)


def cell(value: Any) -> str:
    """A table cell: compact JSON for structures, empty for None."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def identifiers(ids: Sequence[common_pb2.Identifier]) -> str:
    """`user_id:ada email:ada@example.com` for a profile's identifiers."""
    return " ".join(f"{i.type}:{i.value}" for i in ids)


def when(stamp: Timestamp) -> str:
    """ISO-8601 UTC for a set timestamp, empty for an unset one."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime().isoformat(timespec="seconds") + "Z"


def describe_rpc_error(error: grpc.RpcError, what: str) -> str:
    """The status, message and each field violation, one per line."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    violations = field_violations(error)
    # With field violations the message only repeats them: list each on its own line.
    lines = [f"{what}: {code.name if code else 'ERROR'}" + ("" if violations else f": {details}")]
    if code == grpc.StatusCode.UNAVAILABLE:
        lines.append("  is the service running? (`make run`, or set <SERVICE>_ADDR / --addr)")
    lines += [f"  - {v.field}: {v.description}" for v in violations]
    return "\n".join(lines)


def calibration_bars(bins: Sequence[tuple[int, float, float]]) -> str:
    """A terminal chart of (decile, mean predicted, actual rate): two bars per decile."""
    top = max([p for _, p, _ in bins] + [a for _, _, a in bins] + [1e-9])
    width = 40
    lines = ["decile  predicted (#) vs actual (=)"]
    for decile, predicted, actual in bins:
        lines.append(
            f"{decile:>6}  {'#' * round(width * predicted / top):<{width}} {predicted:.3f}"
        )
        lines.append(f"{'':>6}  {'=' * round(width * actual / top):<{width}} {actual:.3f}")
    return "\n".join(lines)
