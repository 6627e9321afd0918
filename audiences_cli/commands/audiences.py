"""Audiences at work: preview, explain, members, export and watching changes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from audiences.v1 import (
    common_pb2,
    segmentation_pb2,
    sync_pb2,
)

from audiences_cli import resources as res
from audiences_cli.app import (
    Failure,
    Output,
    State,
    app,
    call,
    check_output,
    examples,
    parse_identifier,
    parse_instant,
    progress_bar,
)
from audiences_cli.commands.objects import current_specs
from audiences_cli.render import (
    describe_rpc_error,
    emit,
    emit_one,
    err,
    identifiers,
    out,
    when,
)

T = TypeVar("T")


# --- audiences at work ------------------------------------------------------------------------


def _ref_row(ref: common_pb2.ProfileRef) -> dict[str, Any]:
    return {"profile_id": ref.profile_id, "identifiers": identifiers(ref.identifiers)}


@app.command(
    epilog=examples(
        "audiences preview -f examples/definitions/loyal_pro.yaml",
        "audiences preview -f loyal.yaml --as-of 2025-01-01T00:00:00Z --sample 5",
    )
)
def preview(
    file: Annotated[
        Path, typer.Option("--file", "-f", metavar="PATH", help="YAML with one audience.")
    ],
    as_of: Annotated[str | None, typer.Option(help="Evaluate as if now were this instant.")] = None,
    sample: Annotated[int, typer.Option(help="Members to show (-1: all).")] = 10,
    output: Output = "table",
) -> None:
    """Size and sample of an audience definition without saving it; when an audience
    with its key exists, also who would enter and who would exit with this edit."""
    check_output(output)
    try:
        documents = [d for d in res.load_documents([file]) if d.kind == "audience"]
    except res.DefinitionError as error:
        err.print(f"error: {error}", markup=False)
        raise Failure from error
    if len(documents) != 1:
        err.print(f"{file}: expected exactly one audience document, found {len(documents)}")
        raise Failure
    spec = documents[0].spec
    exists = spec["key"] in current_specs("audience")
    request = segmentation_pb2.PreviewRequest(
        definition=res.audience_message(spec).definition,
        audience_key=spec["key"] if exists else "",
        sample_limit=sample,
        account_level=bool(spec.get("account_level", False)),
    )
    instant = parse_instant(as_of)
    if instant is not None:
        request.as_of.CopyFrom(instant)
    reply = call(
        State.connection().segmentation().Preview, request, "admin", f"preview {spec['key']}"
    )
    result: dict[str, Any] = {
        "key": spec["key"],
        "size": reply.size,
        "evaluated_at": when(reply.evaluated_at),
    }
    if exists:
        result |= {"would_enter": reply.would_enter, "would_exit": reply.would_exit}
    if output != "table":
        result |= {
            "sample": [_ref_row(r) for r in reply.sample],
            "enter_sample": [_ref_row(r) for r in reply.enter_sample],
            "exit_sample": [_ref_row(r) for r in reply.exit_sample],
        }
        emit_one(result, output)
        return
    emit([result], "table")
    for title, refs in (
        ("sample", reply.sample),
        ("would enter", reply.enter_sample),
        ("would exit", reply.exit_sample),
    ):
        if refs:
            out.print(f"{title}:", highlight=False)
            emit([_ref_row(r) for r in refs], "table")


@app.command(epilog=examples("audiences explain loyal_pro email:ada@example.com"))
def explain(
    audience: str,
    identifier: Annotated[str, typer.Argument(help="ID_TYPE:VALUE, e.g. user_id:ada")],
    as_of: Annotated[str | None, typer.Option(help="Explain as of this instant.")] = None,
    output: Output = "table",
) -> None:
    """Why a profile is (or is not) a member: each condition with its truth value and
    the evidence that decided it."""
    check_output(output)
    request = segmentation_pb2.ExplainMembershipRequest(
        audience_key=audience, identifier=parse_identifier(identifier)
    )
    instant = parse_instant(as_of)
    if instant is not None:
        request.as_of.CopyFrom(instant)
    reply = call(
        State.connection().segmentation().ExplainMembership, request, "admin", f"explain {audience}"
    )

    def node(n: segmentation_pb2.ExplainNode) -> dict[str, Any]:
        return {
            "path": n.path,
            "kind": n.kind,
            "result": n.result,
            "summary": n.summary,
            "children": [node(c) for c in n.children],
        }

    if output != "table":
        emit_one(
            {"member": reply.member, "profile": _ref_row(reply.profile), "root": node(reply.root)},
            output,
        )
        return
    out.print(
        f"{identifiers(reply.profile.identifiers)}: "
        f"{'member' if reply.member else 'not a member'} of {audience}",
        markup=False,
        highlight=False,
    )

    def walk(n: segmentation_pb2.ExplainNode, depth: int) -> None:
        mark = "yes" if n.result else "no "
        out.print(
            f"  {'  ' * depth}{mark} {n.path or n.kind}: {n.summary}", markup=False, highlight=False
        )
        for child in n.children:
            walk(child, depth + 1)

    walk(reply.root, 0)


@app.command(
    epilog=examples("audiences members loyal_pro", "audiences members loyal_pro --limit 0 -o json")
)
def members(
    audience: str,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 50,
    output: Output = "table",
) -> None:
    """The members of an audience with their identifiers (paged through for you)."""
    check_output(output)
    seg = State.connection().segmentation()
    rows: list[dict[str, Any]] = []
    token = ""
    total = 0
    while True:
        reply = call(
            seg.ListMembers,
            segmentation_pb2.ListMembersRequest(
                audience_key=audience, page_size=1000, page_token=token
            ),
            "admin",
            f"members of {audience}",
        )
        total = reply.total
        rows += [{**_ref_row(m.profile), "entered_at": when(m.entered_at)} for m in reply.members]
        token = reply.next_page_token
        if not token or (limit and len(rows) >= limit):
            break
    emit(rows[:limit] if limit else rows, output)
    if output == "table":
        err.print(f"{total} member(s)", highlight=False)


EXPORT_FORMATS = {
    "formatted": sync_pb2.EXPORT_FORMAT_FORMATTED,
    "unformatted": sync_pb2.EXPORT_FORMAT_UNFORMATTED,
    "single": sync_pb2.EXPORT_FORMAT_SINGLE_COLUMN,
}


@app.command(
    epilog=examples(
        "audiences export loyal_pro --format formatted --out loyal_pro.csv",
        "audiences export loyal_pro --format single --id-type email --out hashed.csv",
    )
)
def export(
    audience: str,
    format: Annotated[
        str, typer.Option("--format", help="formatted, unformatted or single.")
    ] = "formatted",
    out_file: Annotated[
        Path, typer.Option("--out", help="CSV file to write ('-' for stdout).")
    ] = Path("-"),
    id_type: Annotated[str, typer.Option(help="single: the id type of the column.")] = "email",
    raw: Annotated[
        bool, typer.Option("--raw", help="single: raw values instead of SHA-256.")
    ] = False,
) -> None:
    """Export an audience as CSV, streamed, with a progress bar."""
    if format not in EXPORT_FORMATS:
        raise typer.BadParameter(f"--format {format!r}: one of {', '.join(EXPORT_FORMATS)}")
    c = State.connection()
    request = sync_pb2.ExportAudienceRequest(
        audience_key=audience,
        format=EXPORT_FORMATS[format],
        id_type=id_type if format == "single" else "",
        raw=raw,
    )
    target = sys.stdout.buffer if str(out_file) == "-" else out_file.open("wb")
    rows = 0
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"export {audience}", total=None)
            for chunk in c.sync().ExportAudience(
                request, metadata=c.metadata("admin"), timeout=c.timeout
            ):
                target.write(chunk.csv)
                rows += chunk.rows
                bar.update(task, completed=chunk.members_done, total=chunk.members_total or None)
    except grpc.RpcError as error:
        err.print(describe_rpc_error(error, f"export {audience}"), markup=False)
        raise Failure from error
    finally:
        if target is not sys.stdout.buffer:
            target.close()
    err.print(f"{rows} row(s) written to {out_file}", markup=False, highlight=False)


# --- realtime -------------------------------------------------------------------------------


@app.command(
    epilog=examples(
        "audiences watch                       # every change so far, then new ones, until Ctrl-C",
        "audiences watch loyal_pro --count 1 --within 60",
    )
)
def watch(
    audience: Annotated[
        list[str] | None, typer.Argument(help="Audience keys (default: all).")
    ] = None,
    after_seq: Annotated[
        int,
        typer.Option(
            help="Start after this change sequence (0: replay every change, then follow)."
        ),
    ] = 0,
    count: Annotated[int, typer.Option(help="Stop after this many changes (0: never).")] = 0,
    within: Annotated[float, typer.Option(help="Give up after this many seconds (0: never).")] = 0,
) -> None:
    """Print audience enter/exit changes as they happen."""
    c = State.connection()
    start = after_seq
    request = segmentation_pb2.WatchChangesRequest(after_seq=start, audience_keys=audience or [])
    stream = c.segmentation().WatchChanges(
        request, metadata=c.metadata("admin"), timeout=within or None
    )
    seen = 0
    err.print(
        f"watching {'all audiences' if not audience else ', '.join(audience)} after change {start}",
        markup=False,
        highlight=False,
    )
    try:
        for change in stream:
            kind = (
                segmentation_pb2.ChangeKind.Name(change.kind).removeprefix("CHANGE_KIND_").lower()
            )
            out.print(
                f"{when(change.at)} {kind:<7} {change.audience_key} "
                f"{identifiers(change.profile.identifiers)} (seq {change.seq})",
                markup=False,
                highlight=False,
            )
            sys.stdout.flush()
            seen += 1
            if count and seen >= count:
                stream.cancel()
                return
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.CANCELLED:
            return
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            err.print(f"no more changes within {within:g}s ({seen} seen)", highlight=False)
            if count and seen < count:
                raise Failure from error
            return
        err.print(describe_rpc_error(error, "watch"), markup=False)
        raise Failure from error
