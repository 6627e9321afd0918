"""Calibration and lift charts of a prediction's current model, as PNG files.

    .venv/bin/python scripts/prediction_charts.py --address 127.0.0.1:50053 \\
        --key likely_buyer --api-key "$ADMIN_KEY" --out charts/

Reads GetMetrics (the held-out calibration by decile of the model and of the
recency-frequency baseline) and writes ``<key>_calibration.png`` (mean predicted
probability against the actual rate per decile: on the diagonal means calibrated) and
``<key>_lift.png`` (each decile's rate over the overall rate, highest decile first, and
the cumulative lift of the top k deciles). The CDNOW evaluation
(bench/prediction_cdnow.py --charts DIR) draws the same charts with RFM and BG/NBD.
Matplotlib draws off-screen (the Agg backend): no display is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, before pyplot is imported

import matplotlib.pyplot as plt


@dataclass(frozen=True)
class Curve:
    """One scorer's calibration by decile: dicts with mean_predicted, actual_rate and
    count, lowest decile first (services/prediction/metrics.calibration_by_decile)."""

    name: str
    bins: Sequence[dict[str, Any]]


def _overall(curve: Curve) -> float:
    total = sum(b["count"] for b in curve.bins)
    return sum(b["actual_rate"] * b["count"] for b in curve.bins) / max(total, 1)


def render_calibration(curves: Sequence[Curve], title: str, path: Path) -> None:
    """Predicted against actual per decile, beside the diagonal."""
    figure, axes = plt.subplots(figsize=(6, 6))
    top = max(max(b["mean_predicted"], b["actual_rate"]) for c in curves for b in c.bins)
    axes.plot([0, top], [0, top], color="grey", linestyle="--", label="calibrated")
    for curve in curves:
        axes.plot(
            [b["mean_predicted"] for b in curve.bins],
            [b["actual_rate"] for b in curve.bins],
            marker="o",
            label=curve.name,
        )
    axes.set_xlabel("mean predicted probability (decile)")
    axes.set_ylabel("actual rate")
    axes.set_title(f"Calibration: {title}", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def render_lift(curves: Sequence[Curve], title: str, path: Path) -> None:
    """Per-decile and cumulative lift, highest-scoring decile first."""
    figure, (per_decile, cumulative) = plt.subplots(1, 2, figsize=(11, 5))
    width = 0.8 / max(len(curves), 1)
    for i, curve in enumerate(curves):
        overall = _overall(curve)
        ordered = list(reversed(curve.bins))  # highest scores first
        lifts = [b["actual_rate"] / overall if overall else 0.0 for b in ordered]
        positions = [d + 1 + (i - (len(curves) - 1) / 2) * width for d in range(len(ordered))]
        per_decile.bar(positions, lifts, width=width, label=curve.name)
        hits = counts = 0.0
        running = []
        for b in ordered:
            hits += b["actual_rate"] * b["count"]
            counts += b["count"]
            running.append(hits / counts / overall if overall else 0.0)
        cumulative.plot(range(1, len(ordered) + 1), running, marker="o", label=curve.name)
    for axes, label in ((per_decile, "lift of the decile"), (cumulative, "cumulative lift")):
        axes.axhline(1.0, color="grey", linestyle="--")
        axes.set_xlabel("decile by score (1 = highest)")
        axes.set_ylabel(label)
        axes.legend()
    figure.suptitle(f"Lift: {title}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _bins(proto_bins: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"mean_predicted": b.mean_predicted, "actual_rate": b.actual_rate, "count": b.count}
        for b in proto_bins
    ]


async def metrics_of(address: str, key: str, api_key: str) -> Any:
    """The prediction's current metrics (GetMetrics)."""
    import grpc
    from audiences.v1 import prediction_pb2, prediction_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        reply = await prediction_pb2_grpc.PredictionServiceStub(channel).GetMetrics(
            prediction_pb2.GetMetricsRequest(key=key),
            metadata=(("authorization", f"Bearer {api_key}"),),
        )
    return reply.metrics


def charts_of(found: Any, key: str, out: Path) -> list[Path]:
    """Write the two charts of a PredictionMetrics message; returns their paths."""
    curves = [
        Curve(f"model v{found.model_version}", _bins(found.calibration)),
        Curve("recency-frequency baseline", _bins(found.baseline.calibration)),
    ]
    title = f"{key} (held-out test rows)"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{key}_calibration.png", out / f"{key}_lift.png"]
    render_calibration(curves, title, paths[0])
    render_lift(curves, title, paths[1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the prediction service, host:port")
    parser.add_argument("--key", required=True, help="the prediction's key")
    parser.add_argument("--api-key", required=True, help="an admin API key")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the PNGs")
    args = parser.parse_args()
    found = asyncio.run(metrics_of(args.address, args.key, args.api_key))
    for path in charts_of(found, args.key, args.out):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
