"""Profiles: one person's traits, audiences, predictions and timeline."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import typer
from audiences.v1 import (
    profile_pb2,
)

from audiences_cli.app import (
    Output,
    State,
    app,
    call,
    check_output,
    examples,
    parse_identifier,
)
from audiences_cli.render import (
    emit,
    emit_one,
    when,
)

T = TypeVar("T")


# --- profiles ------------------------------------------------------------------------------


def _json_or_none(raw: bytes) -> Any:
    return json.loads(raw) if raw else None


@app.command(
    epilog=examples(
        "audiences profile email:ada@example.com", "audiences profile user_id:ada -o json"
    )
)
def profile(
    identifier: Annotated[str, typer.Argument(help="ID_TYPE:VALUE, e.g. email:ada@example.com")],
    output: Output = "yaml",
) -> None:
    """A profile by any of its identifiers: traits, computed traits, audiences,
    predictions and recommendations (read from the hot state)."""
    check_output(output)
    p = call(
        State.connection().profile().GetProfile,
        profile_pb2.GetProfileRequest(identifier=parse_identifier(identifier)),
        "profile",
        f"profile {identifier}",
    )
    emit_one(
        {
            "profile_id": p.profile_id,
            "identifiers": [f"{i.type}:{i.value}" for i in p.identifiers],
            "traits": _json_or_none(p.traits) or {},
            "computed_traits": _json_or_none(p.computed_traits) or {},
            "audiences": {a.key: when(a.entered_at) for a in p.audiences},
            "predictions": {
                s.key: {
                    "probability": round(s.probability, 4),
                    "percentile": s.percentile,
                    "top_features": list(s.top_features),
                }
                for s in p.predictions
            },
            "recommendations": [
                {"item_id": r.item_id, "score": round(r.score, 4), "model": r.model_key}
                for r in p.recommendations
            ],
            "last_seen": when(p.last_seen),
        },
        "json" if output == "json" else "yaml",
    )


@app.command(
    epilog=examples(
        "audiences events user_id:ada",
        "audiences events email:ada@example.com --name 'Order Completed' -o json",
    )
)
def events(
    identifier: Annotated[str, typer.Argument(help="ID_TYPE:VALUE")],
    limit: Annotated[int, typer.Option(help="Newest first, at most this many.")] = 20,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", metavar="NAME", help="Only events of this name (repeatable)."),
    ] = None,
    output: Output = "table",
) -> None:
    """A profile's event timeline, newest first."""
    check_output(output)
    request = profile_pb2.ListEventsRequest(
        identifier=parse_identifier(identifier),
        page_size=min(max(limit, 1), 1000),
        event_names=name or [],
    )
    reply = call(
        State.connection().profile().ListEvents, request, "profile", f"events of {identifier}"
    )
    rows = [
        {
            "seq": e.seq,
            "timestamp": when(e.timestamp),
            "type": e.type,
            "name": e.name,
            "properties": _json_or_none(e.properties),
            "traits": _json_or_none(e.traits),
        }
        for e in reply.events[:limit]
    ]
    emit(rows, output)
