"""The `audiences` application: global options, the connection they describe, and
the helpers every command uses (calls with readable errors, identifiers, instants,
progress bars)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from audiences.v1 import (
    common_pb2,
)
from google.protobuf.timestamp_pb2 import Timestamp
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from audiences_cli.connection import Connection, Tls
from audiences_cli.render import (
    FORMATS,
    describe_rpc_error,
    err,
)

T = TypeVar("T")


def examples(*lines: str) -> str:
    """A help epilog listing example invocations (kept verbatim)."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


app = typer.Typer(
    name="audiences",
    help="Operate an Audiences deployment from a terminal: definitions as YAML, "
    "profiles, members, exports, predictions, syncs and demo data.",
    epilog=examples(
        "audiences apply -f examples/definitions/",
        "audiences list audiences -o yaml",
        "audiences profile email:ada@example.com",
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
sync_app = typer.Typer(help="Run syncs and read their runs.", no_args_is_help=True)
demo_app = typer.Typer(help="Fill a workspace with demo or public data.", no_args_is_help=True)
app.add_typer(sync_app, name="sync")
app.add_typer(demo_app, name="demo")


class Failure(Exception):
    """A command failed in a way already described for the user (exit code 1)."""


class State:
    """The connection the global options describe, opened on first use."""

    options: dict[str, Any] = {}  # noqa: RUF012 (one CLI invocation per process)
    _connection: Connection | None = None

    @classmethod
    def connection(cls) -> Connection:
        if cls._connection is None:
            cls._connection = Connection.from_options(**cls.options)
        return cls._connection


@app.callback()
def _global(
    addr: Annotated[
        list[str] | None,
        typer.Option(
            "--addr",
            metavar="SERVICE=HOST:PORT",
            help="SERVICE=HOST:PORT for one service (repeatable); default <SERVICE>_ADDR "
            "from the environment, else make run's ports 50051-50055.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="AUDIENCES_KEY",
            help="API key for every call (else AUDIENCES_ADMIN_KEY / _INGEST_KEY / "
            "_PROFILE_KEY, else var/demo-workspace.json).",
            show_envvar=False,
        ),
    ] = None,
    keys_file: Annotated[
        Path | None,
        typer.Option("--keys-file", help="JSON with admin_key, ingest_key, profile_key."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per call.")] = 120.0,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar="AUDIENCES_TLS_CA",
            metavar="PEM",
            help="Connect over TLS, trusting this CA (the services' TLS_CERT_FILE issuer).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="AUDIENCES_TLS_CERT",
            metavar="PEM",
            help="Client certificate (mutual TLS).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key", envvar="AUDIENCES_TLS_KEY", metavar="PEM", help="Client key (mutual TLS)."
        ),
    ] = None,
) -> None:
    if tls_ca is None and (tls_cert is not None or tls_key is not None):
        raise typer.BadParameter("--tls-cert and --tls-key need --tls-ca (the services' CA)")
    tls = Tls(tls_ca, tls_cert, tls_key) if tls_ca is not None else None
    State.options = {
        "addr": addr or [],
        "key": key,
        "keys_file": keys_file,
        "timeout": timeout,
        "tls": tls,
    }
    State._connection = None


def call(method: Callable[..., T], request: Any, scope: str, what: str) -> T:
    """One unary call with the scope's key; Failure with the server's field violations."""
    connection = State.connection()
    try:
        return method(request, metadata=connection.metadata(scope), timeout=connection.timeout)
    except grpc.RpcError as error:
        err.print(describe_rpc_error(error, what), markup=False, highlight=False)
        raise Failure from error


def parse_identifier(text: str) -> common_pb2.Identifier:
    """`email:ada@example.com` -> Identifier(type=email, value=ada@example.com)."""
    kind, sep, value = text.partition(":")
    if not sep or not kind or not value:
        raise typer.BadParameter(f"{text!r}: expected ID_TYPE:VALUE, e.g. user_id:ada")
    return common_pb2.Identifier(type=kind, value=value)


def parse_instant(text: str | None) -> Timestamp | None:
    """An ISO-8601 instant (`2025-01-31T12:00:00Z`) as a Timestamp, None when absent."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 instant") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def progress_bar() -> Progress:
    """A progress bar with counts, elapsed time and an ETA, on stderr."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


Output = Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")]


def check_output(output: str) -> None:
    if output not in FORMATS:
        raise typer.BadParameter(f"--output {output!r}: one of {', '.join(FORMATS)}")
