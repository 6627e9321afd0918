"""Training predictions and recommendations, and a prediction's metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from audiences.v1 import (
    prediction_pb2,
    profile_pb2,
)

from audiences_cli import demo as demo_data
from audiences_cli.app import (
    Failure,
    Output,
    State,
    app,
    call,
    check_output,
    examples,
    parse_instant,
    progress_bar,
)
from audiences_cli.commands.objects import current_specs
from audiences_cli.render import (
    calibration_bars,
    emit,
    emit_one,
    err,
    identifiers,
    out,
    when,
)

T = TypeVar("T")


# --- predictions and recommendations ----------------------------------------------------------


@contextmanager
def _polling(progress: Callable[[], tuple[float, float | None, str]], title: str) -> Iterator[None]:
    """Show a progress bar fed by `progress()` (done, total, stage) while the body runs."""
    stop = threading.Event()
    with progress_bar() as bar:
        task = bar.add_task(title, total=None)

        def poll() -> None:
            while not stop.wait(0.5):
                try:
                    done, total, stage = progress()
                except (grpc.RpcError, Failure):
                    continue
                bar.update(
                    task, completed=done, total=total, description=f"{title} {stage}".strip()
                )

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
        # Done: the last poll may have seen the stage before the final one.
        total = next(t.total for t in bar.tasks if t.id == task) or 1
        bar.update(task, completed=total, total=total, description=f"{title} done")


def _prediction_exists(key: str) -> bool:
    return key in current_specs("prediction")


@app.command(
    epilog=examples(
        "audiences train will_purchase",
        "audiences train will_purchase --cutoff 2025-01-01T00:00:00Z",
        "audiences train similar_products",
    )
)
def train(
    name: Annotated[str, typer.Argument(help="A prediction key or a recommendation key.")],
    cutoff: Annotated[
        str | None, typer.Option(help="Prediction training cutoff (default now - horizon).")
    ] = None,
    output: Output = "table",
) -> None:
    """Train a prediction (then score it) or a recommendation, with a progress bar."""
    check_output(output)
    c = State.connection()
    if _prediction_exists(name):
        pred = c.prediction()
        request = prediction_pb2.TrainRequest(key=name)
        instant = parse_instant(cutoff)
        if instant is not None:
            request.cutoff.CopyFrom(instant)

        def progress() -> tuple[float, float | None, str]:
            p = pred.GetPrediction(
                prediction_pb2.GetPredictionRequest(key=name),
                metadata=c.metadata("admin"),
                timeout=5,
            )
            return p.progress.done, p.progress.total or None, p.progress.stage

        with _polling(progress, f"train {name}"):
            reply = call(pred.Train, request, "admin", f"train {name}")
        scored = call(pred.Score, prediction_pb2.ScoreRequest(key=name), "admin", f"score {name}")
        _print_metrics(reply.metrics, output)
        err.print(f"scored {scored.scored} profile(s)", highlight=False)
        return
    stub = c.profile()
    model = call(
        stub.TrainRecommendationModel,
        profile_pb2.TrainRecommendationModelRequest(key=name),
        "admin",
        f"train {name}",
    )
    with progress_bar() as bar:
        task = bar.add_task(f"train {name}", total=1.0)
        while model.training.state == profile_pb2.TRAINING_STATE_RUNNING:
            bar.update(task, completed=model.training.progress)
            time.sleep(0.3)  # polling the job's progress
            model = call(
                stub.GetRecommendationModel,
                profile_pb2.GetRecommendationModelRequest(key=name),
                "admin",
                f"get {name}",
            )
        bar.update(task, completed=1.0)
    t = model.training
    if t.state == profile_pb2.TRAINING_STATE_FAILED:
        err.print(f"training {name} failed: {t.error}", markup=False)
        raise Failure
    emit(
        [
            {
                "key": name,
                "profiles": t.profiles,
                "items": t.items,
                "interactions": t.interactions,
                "finished_at": when(t.finished_at),
            }
        ],
        output,
    )


def _metrics_dict(m: prediction_pb2.PredictionMetrics) -> dict[str, Any]:
    return {
        "key": m.key,
        "model_version": m.model_version,
        "cutoff": when(m.cutoff),
        "roc_auc": round(m.roc_auc, 4),
        "pr_auc": round(m.pr_auc, 4),
        "log_loss": round(m.log_loss, 4),
        "brier": round(m.brier, 4),
        "top_decile_lift": round(m.top_decile_lift, 3),
        "positive_rate": round(m.positive_rate, 4),
        "train_rows": m.train_rows,
        "test_rows": m.test_rows,
        "baseline": {
            "roc_auc": round(m.baseline.roc_auc, 4),
            "pr_auc": round(m.baseline.pr_auc, 4),
            "brier": round(m.baseline.brier, 4),
            "top_decile_lift": round(m.baseline.top_decile_lift, 3),
        },
        "calibration": [
            {
                "decile": b.decile,
                "mean_predicted": round(b.mean_predicted, 4),
                "actual_rate": round(b.actual_rate, 4),
                "count": b.count,
            }
            for b in m.calibration
        ],
        "feature_importance": [
            {"feature": f.feature, "gain": round(f.gain, 2)} for f in m.feature_importance[:10]
        ],
    }


def _print_metrics(m: prediction_pb2.PredictionMetrics, output: str) -> None:
    values = _metrics_dict(m)
    if output != "table":
        emit_one(values, output)
        return
    base = values["baseline"]
    emit(
        [
            {"metric": name, "model": values[name], "baseline": base.get(name, "")}
            for name in (
                "roc_auc",
                "pr_auc",
                "brier",
                "top_decile_lift",
                "log_loss",
                "positive_rate",
            )
        ],
        "table",
    )
    out.print("calibration (predicted vs actual by decile):", highlight=False)
    emit(values["calibration"], "table")


@app.command(
    epilog=examples(
        "audiences metrics will_purchase", "audiences metrics will_purchase --plot calibration.png"
    )
)
def metrics(
    prediction: str,
    plot: Annotated[Path | None, typer.Option(help="Write a calibration chart (PNG) here.")] = None,
    output: Output = "table",
) -> None:
    """A trained prediction's metrics against the recency-frequency baseline, its
    calibration table, and optionally a calibration chart."""
    check_output(output)
    m = call(
        State.connection().prediction().GetMetrics,
        prediction_pb2.GetMetricsRequest(key=prediction),
        "admin",
        f"metrics of {prediction}",
    )
    _print_metrics(m, output)
    if plot is not None:
        try:
            demo_data.calibration_chart(m, plot)
        except ImportError:
            # The chart is a convenience: without matplotlib the same numbers are drawn
            # in the terminal instead of failing the command.
            out.print(
                calibration_bars(
                    [(b.decile, b.mean_predicted, b.actual_rate) for b in m.calibration]
                ),
                markup=False,
                highlight=False,
            )
            err.print(
                f"{plot} not written: the PNG chart needs matplotlib (pip install matplotlib)",
                markup=False,
                highlight=False,
            )
            return
        err.print(f"calibration chart written to {plot}", markup=False, highlight=False)


@app.command(
    epilog=examples(
        "audiences scores will_purchase --min-percentile 90",
        "audiences scores will_purchase --limit 0 -o json > scores.json",
    )
)
def scores(
    prediction: str,
    min_percentile: Annotated[float, typer.Option(help="Lowest percentile (0-100).")] = 0,
    max_percentile: Annotated[float, typer.Option(help="Highest percentile (0-100).")] = 100,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 20,
    output: Output = "table",
) -> None:
    """Scored profiles of a prediction in a percentile range, with the features that
    raised each score most."""
    check_output(output)
    stub = State.connection().prediction()
    rows: list[dict[str, Any]] = []
    token = ""
    while True:
        request = prediction_pb2.ListScoresRequest(
            key=prediction,
            min_percentile=min_percentile,
            max_percentile=max_percentile,
            page_size=1000,
            page_token=token,
        )
        reply = call(stub.ListScores, request, "admin", f"scores of {prediction}")
        rows += [
            {
                "identifiers": identifiers(s.profile.identifiers),
                "probability": round(s.probability, 4),
                "percentile": round(s.percentile, 1),
                "reasons": ", ".join(s.reasons) if output == "table" else list(s.reasons),
            }
            for s in reply.scores
        ]
        token = reply.next_page_token
        if not token or (limit and len(rows) >= limit):
            break
    emit(rows[:limit] if limit else rows, output)
