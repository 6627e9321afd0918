"""Objects as declarative definitions: apply, get, list and delete."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from audiences.v1 import (
    prediction_pb2,
    profile_pb2,
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
    progress_bar,
)
from audiences_cli.render import (
    emit,
    emit_one,
    err,
    out,
    when,
)

T = TypeVar("T")


# --- reading server objects as specs ---------------------------------------------------


def _paged(fetch: Callable[[str], tuple[list[T], str]]) -> list[T]:
    items: list[T] = []
    token = ""
    while True:
        page, token = fetch(token)
        items += page
        if not token:
            return items


def current_specs(kind: str) -> dict[str, dict[str, Any]]:
    """Every object of `kind` on the server as {name: spec}."""
    c = State.connection()
    what = f"list {kind}"
    if kind == "audience":
        return {a.key: res.audience_spec(a) for a in _audiences()}
    if kind == "computed_trait":
        return {t.key: res.computed_trait_spec(t) for t in _computed_traits()}
    if kind == "prediction":
        pred = c.prediction()
        predictions = _paged(
            lambda t: _page(
                call(
                    pred.ListPredictions,
                    prediction_pb2.ListPredictionsRequest(page_size=500, page_token=t),
                    "admin",
                    what,
                ),
                "predictions",
            )
        )
        return {p.key: res.prediction_spec(p) for p in predictions}
    if kind == "recommendation":
        models = call(
            c.profile().ListRecommendationModels,
            profile_pb2.ListRecommendationModelsRequest(),
            "admin",
            what,
        ).models
        return {m.key: res.recommendation_spec(m) for m in models}
    if kind == "destination":
        return {d.name: res.destination_spec(d) for d in _destinations()}
    names = {d.id: d.name for d in _destinations()}
    return {
        res.object_name("sync", spec): spec for spec in (res.sync_spec(s, names) for s in _syncs())
    }


def _page(reply: Any, field: str) -> tuple[list[Any], str]:
    return list(getattr(reply, field)), reply.next_page_token


def _state(state: segmentation_pb2.AudienceState.ValueType) -> str:
    return segmentation_pb2.AudienceState.Name(state).removeprefix("AUDIENCE_STATE_").lower()


def _audiences() -> list[segmentation_pb2.Audience]:
    stub = State.connection().segmentation()
    return _paged(
        lambda t: _page(
            call(
                stub.ListAudiences,
                segmentation_pb2.ListAudiencesRequest(page_size=500, page_token=t),
                "admin",
                "list audiences",
            ),
            "audiences",
        )
    )


def _computed_traits() -> list[segmentation_pb2.ComputedTrait]:
    stub = State.connection().segmentation()
    return _paged(
        lambda t: _page(
            call(
                stub.ListComputedTraits,
                segmentation_pb2.ListComputedTraitsRequest(page_size=500, page_token=t),
                "admin",
                "list computed traits",
            ),
            "computed_traits",
        )
    )


def _destinations() -> list[sync_pb2.Destination]:
    stub = State.connection().sync()
    return _paged(
        lambda t: _page(
            call(
                stub.ListDestinations,
                sync_pb2.ListDestinationsRequest(page_size=500, page_token=t),
                "admin",
                "list destinations",
            ),
            "destinations",
        )
    )


def _syncs() -> list[sync_pb2.Sync]:
    stub = State.connection().sync()
    return _paged(
        lambda t: _page(
            call(
                stub.ListSyncs,
                sync_pb2.ListSyncsRequest(page_size=500, page_token=t),
                "admin",
                "list syncs",
            ),
            "syncs",
        )
    )


def find_sync(name: str) -> sync_pb2.Sync:
    """A sync by id or by `destination/source_key`."""
    names = {d.id: d.name for d in _destinations()}
    for s in _syncs():
        if name in (s.id, res.object_name("sync", res.sync_spec(s, names))):
            return s
    err.print(
        f"no sync {name!r} (name a sync by id or DESTINATION/SOURCE_KEY; `audiences list syncs`)"
    )
    raise Failure


# --- apply -------------------------------------------------------------------------------


@app.command(
    epilog=examples(
        "audiences apply -f examples/definitions/ --dry-run",
        "audiences apply -f audiences/loyal.yaml -f destinations.yaml",
        "audiences apply -f definitions/ --replace",
    )
)
def apply(
    files: Annotated[
        list[Path],
        typer.Option(
            "--file", "-f", metavar="PATH", help="A YAML file or a directory of them (repeatable)."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; change nothing.")
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Delete and re-create changed objects that cannot be updated in place.",
        ),
    ] = False,
    no_backfill: Annotated[
        bool, typer.Option("--no-backfill", help="Create audiences and traits without backfill.")
    ] = False,
) -> None:
    """Create or update audiences, computed traits, predictions, recommendations,
    destinations and syncs from YAML, declaratively: objects that match their file are
    left untouched, and every change is shown as a diff before it is made."""
    try:
        documents = res.apply_order(
            res.with_absolute_directories(res.load_documents(files), Path.cwd())
        )
    except res.DefinitionError as error:
        err.print(f"error: {error}", markup=False)
        raise Failure from error
    current = {kind: current_specs(kind) for kind in {d.kind for d in documents}}
    changes = [res.plan_change(d, current[d.kind].get(d.name)) for d in documents]
    symbols = {"create": "+", "update": "~", "replace": "-/+", "unchanged": "="}
    for change in changes:
        d = change.document
        out.print(
            f"{symbols[change.action]} {d.kind} {d.name} ({change.action})",
            markup=False,
            highlight=False,
        )
        if change.diff:
            out.print(change.diff, markup=False, highlight=False)
    counts = {a: sum(c.action == a for c in changes) for a in symbols}
    summary = ", ".join(
        f"{n} to {a}" if a != "unchanged" else f"{n} unchanged" for a, n in counts.items() if n
    )
    out.print(f"plan: {summary or 'nothing in the files'}", highlight=False)
    blocked = [c for c in changes if c.action == "replace" and not replace]
    if blocked:
        for c in blocked:
            err.print(
                f"{c.document.kind} {c.document.name} cannot be updated in place: "
                "pass --replace to delete and re-create it",
                markup=False,
            )
        raise Failure
    if dry_run:
        return
    for change in changes:
        if change.action != "unchanged":
            _apply_change(change, no_backfill)
    out.print("applied", highlight=False)


def _apply_change(change: res.Change, no_backfill: bool) -> None:
    d = change.document
    c = State.connection()
    what = f"{change.action} {d.kind} {d.name} ({d.source})"
    if change.action == "replace":
        _delete(d.kind, d.name)
    creating = change.action in ("create", "replace")
    if d.kind == "audience":
        seg = c.segmentation()
        message = res.audience_message(d.spec)
        if creating:
            audience = call(
                seg.CreateAudience,
                segmentation_pb2.CreateAudienceRequest(audience=message, skip_backfill=no_backfill),
                "admin",
                what,
            )
        else:
            audience = call(
                seg.UpdateAudience,
                segmentation_pb2.UpdateAudienceRequest(audience=message),
                "admin",
                what,
            )
        _wait_backfill(d.name, audience)
    elif d.kind == "computed_trait":
        seg = c.segmentation()
        trait = res.computed_trait_message(d.spec)
        if creating:
            call(
                seg.CreateComputedTrait,
                segmentation_pb2.CreateComputedTraitRequest(
                    computed_trait=trait, skip_backfill=no_backfill
                ),
                "admin",
                what,
            )
        else:
            call(
                seg.UpdateComputedTrait,
                segmentation_pb2.UpdateComputedTraitRequest(computed_trait=trait),
                "admin",
                what,
            )
    elif d.kind == "prediction":
        call(
            c.prediction().CreatePrediction,
            prediction_pb2.CreatePredictionRequest(prediction=res.prediction_message(d.spec)),
            "admin",
            what,
        )
    elif d.kind == "recommendation":
        call(
            c.profile().CreateRecommendationModel,
            profile_pb2.CreateRecommendationModelRequest(model=res.recommendation_message(d.spec)),
            "admin",
            what,
        )
    elif d.kind == "destination":
        try:
            existing = "" if creating else _destination_id(d.name)
            destination = res.destination_message(d.spec, os.environ, existing)
        except res.DefinitionError as error:
            err.print(f"error: {error}", markup=False)
            raise Failure from error
        stub = c.sync()
        if creating:
            call(
                stub.CreateDestination,
                sync_pb2.CreateDestinationRequest(destination=destination),
                "admin",
                what,
            )
        else:
            call(
                stub.UpdateDestination,
                sync_pb2.UpdateDestinationRequest(destination=destination),
                "admin",
                what,
            )
    else:
        destination_id = _destination_id(str(d.spec["destination"]))
        sync_id = "" if creating else find_sync(d.name).id
        sync_obj = res.sync_message(d.spec, destination_id, sync_id)
        stub = c.sync()
        if creating:
            call(stub.CreateSync, sync_pb2.CreateSyncRequest(sync=sync_obj), "admin", what)
        else:
            call(stub.UpdateSync, sync_pb2.UpdateSyncRequest(sync=sync_obj), "admin", what)
    err.print(
        f"  {change.action}d {d.kind} {d.name}".replace("eed", "ed"), markup=False, highlight=False
    )


def _destination_id(name: str) -> str:
    for destination in _destinations():
        if destination.name == name:
            return destination.id
    err.print(f"no destination named {name!r}", markup=False)
    raise Failure


def _wait_backfill(key: str, audience: segmentation_pb2.Audience) -> None:
    """Follow a backfill to LIVE with a progress bar (it may already be done)."""
    if audience.state != segmentation_pb2.AUDIENCE_STATE_BACKFILLING:
        return
    seg = State.connection().segmentation()
    with progress_bar() as bar:
        task = bar.add_task(f"backfill {key}", total=None)
        while audience.state == segmentation_pb2.AUDIENCE_STATE_BACKFILLING:
            total = audience.backfill.total or None
            bar.update(task, completed=audience.backfill.done, total=total)
            time.sleep(0.2)  # polling the server's progress, not synchronising a test
            audience = call(
                seg.GetAudience,
                segmentation_pb2.GetAudienceRequest(key=key),
                "admin",
                f"get audience {key}",
            )
    if audience.state == segmentation_pb2.AUDIENCE_STATE_FAILED:
        err.print(f"audience {key} failed: {audience.failure_reason}", markup=False)
        raise Failure


# --- get / list / delete --------------------------------------------------------------------

LIST_COLUMNS = {
    "audience": ("key", "name", "state", "size", "version", "realtime", "updated_at"),
    "computed_trait": ("key", "name", "state", "version", "realtime", "updated_at"),
    "prediction": ("key", "name", "state", "horizon_days", "model_version", "trained_at"),
    "recommendation": ("key", "item_property", "size", "training", "items", "finished_at"),
    "destination": ("name", "type", "id", "target", "has_secret"),
    "sync": ("name", "id", "cadence", "cursor", "paused", "next_run_at"),
}


def status_rows(kind: str) -> list[dict[str, Any]]:
    """Every object of `kind` with its spec and server status, as flat rows."""
    c = State.connection()
    rows: list[dict[str, Any]] = []
    if kind == "audience":
        for a in _audiences():
            rows.append(
                {
                    **res.audience_spec(a),
                    "state": _state(a.state),
                    "size": a.size,
                    "version": a.version,
                    "updated_at": when(a.updated_at),
                    "failure_reason": a.failure_reason,
                }
            )
    elif kind == "computed_trait":
        for t in _computed_traits():
            rows.append(
                {
                    **res.computed_trait_spec(t),
                    "state": _state(t.state),
                    "version": t.version,
                    "updated_at": when(t.updated_at),
                    "failure_reason": t.failure_reason,
                }
            )
    elif kind == "prediction":
        pred = c.prediction()
        for p in _paged(
            lambda t: _page(
                call(
                    pred.ListPredictions,
                    prediction_pb2.ListPredictionsRequest(page_size=500, page_token=t),
                    "admin",
                    "list predictions",
                ),
                "predictions",
            )
        ):
            rows.append(
                {
                    **res.prediction_spec(p),
                    "state": p.state,
                    "model_version": p.model_version,
                    "trained_at": when(p.trained_at),
                    "scored_at": when(p.scored_at),
                    "failure_reason": p.failure_reason,
                }
            )
    elif kind == "recommendation":
        for m in call(
            c.profile().ListRecommendationModels,
            profile_pb2.ListRecommendationModelsRequest(),
            "admin",
            "list recommendations",
        ).models:
            training = (
                profile_pb2.TrainingState.Name(m.training.state)
                .removeprefix("TRAINING_STATE_")
                .lower()
            )
            rows.append(
                {
                    **res.recommendation_spec(m),
                    "training": training,
                    "items": m.training.items,
                    "finished_at": when(m.training.finished_at),
                }
            )
    elif kind == "destination":
        for d in _destinations():
            rows.append(
                {
                    **res.destination_spec(d),
                    "id": d.id,
                    "target": d.base_url or d.directory,
                    "has_secret": d.has_secret,
                }
            )
    else:
        names = {d.id: d.name for d in _destinations()}
        for s in _syncs():
            spec = res.sync_spec(s, names)
            rows.append(
                {
                    "name": res.object_name("sync", spec),
                    **spec,
                    "id": s.id,
                    "cursor": s.cursor,
                    "paused_reason": s.paused_reason,
                    "next_run_at": when(s.next_run_at),
                }
            )
    return rows


def _row_name(kind: str, row: dict[str, Any]) -> str:
    return str(row["name"]) if kind == "sync" else res.object_name(kind, row)


@app.command("list", epilog=examples("audiences list audiences", "audiences list syncs -o json"))
def list_objects(kind: str, output: Output = "table") -> None:
    """List every object of a KIND: audiences, computed-traits, predictions,
    recommendations, destinations or syncs."""
    check_output(output)
    kind = _kind(kind)
    rows = status_rows(kind)
    emit(rows, output, LIST_COLUMNS[kind] if output == "table" else ())


@app.command(
    epilog=examples(
        "audiences get audience loyal_pro",
        "audiences get audience loyal_pro -o json > loyal_pro.json",
    )
)
def get(kind: str, name: str, output: Output = "yaml") -> None:
    """Show one object with its status; `-o yaml` (the default) prints a document
    `audiences apply` accepts back (status fields aside)."""
    check_output(output)
    kind = _kind(kind)
    for row in status_rows(kind):
        if name in (_row_name(kind, row), row.get("id")):
            spec = {k: v for k, v in row.items() if k in res.FIELDS[kind]}
            status = {k: v for k, v in row.items() if k not in res.FIELDS[kind] and k != "name"}
            emit_one({"kind": kind, **spec, "status": status}, output)
            return
    err.print(f"no {kind} {name!r}", markup=False)
    raise Failure


@app.command(
    epilog=examples(
        "audiences delete audience loyal_pro", "audiences delete sync tour_files/loyal_pro"
    )
)
def delete(kind: str, name: str) -> None:
    """Delete one object (by key; a destination by name; a sync by id or DESTINATION/SOURCE)."""
    _delete(_kind(kind), name)
    out.print(f"deleted {kind} {name}", markup=False, highlight=False)


def _kind(text: str) -> str:
    try:
        return res.kind_of(text)
    except res.DefinitionError as error:
        raise typer.BadParameter(str(error)) from error


def _delete(kind: str, name: str) -> None:
    c = State.connection()
    what = f"delete {kind} {name}"
    if kind == "audience":
        call(
            c.segmentation().DeleteAudience,
            segmentation_pb2.DeleteAudienceRequest(key=name),
            "admin",
            what,
        )
    elif kind == "computed_trait":
        call(
            c.segmentation().DeleteComputedTrait,
            segmentation_pb2.DeleteComputedTraitRequest(key=name),
            "admin",
            what,
        )
    elif kind == "prediction":
        call(
            c.prediction().DeletePrediction,
            prediction_pb2.DeletePredictionRequest(key=name),
            "admin",
            what,
        )
    elif kind == "recommendation":
        call(
            c.profile().DeleteRecommendationModel,
            profile_pb2.DeleteRecommendationModelRequest(key=name),
            "admin",
            what,
        )
    elif kind == "destination":
        call(
            c.sync().DeleteDestination,
            sync_pb2.DeleteDestinationRequest(id=_destination_id(name)),
            "admin",
            what,
        )
    else:
        call(c.sync().DeleteSync, sync_pb2.DeleteSyncRequest(id=find_sync(name).id), "admin", what)
