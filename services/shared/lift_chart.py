"""`audiences lift-chart AUDIENCE`: an audience's measured lift over time as a PNG.

A gRPC client like any other (GetAudiencePerformance with an admin key), so it runs
wherever the operator is; the chart is drawn with matplotlib (the `charts` extra),
imported only by this command so no service carries it.

Top: relative lift per day of first exposure with its 95% interval (Katz log), the
total's lift and interval as a line and band, and zero. Bottom: exposed people per
day, treatment and holdout, with the sample-ratio check in the title.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from audiences.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.shared.timestamps import timestamp_from_us

__all__ = ["add_command", "fetch", "render"]


async def fetch(
    address: str, key: str, audience: str, days: int, now: datetime | None = None
) -> segmentation_pb2.AudiencePerformance:
    """GetAudiencePerformance of the `days` up to now."""
    end = now or datetime.now(UTC)
    start = end - timedelta(days=days)
    request = segmentation_pb2.GetAudiencePerformanceRequest(audience_key=audience)
    request.start.CopyFrom(timestamp_from_us(int(start.timestamp() * 1_000_000)))
    request.end.CopyFrom(timestamp_from_us(int(end.timestamp() * 1_000_000)))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
        return await stub.GetAudiencePerformance(
            request, metadata=(("authorization", f"Bearer {key}"),)
        )


def render(report: segmentation_pb2.AudiencePerformance, path: Path) -> None:
    """Draw `report` into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    days = [datetime.fromtimestamp(d.day.seconds, UTC) for d in report.days]
    lifted = [(day, d.lift) for day, d in zip(days, report.days, strict=True)]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    shown = [(day, lift) for day, lift in lifted if lift.relative_defined]
    if shown:
        x = [day for day, _ in shown]
        y = [lift.relative * 100 for _, lift in shown]
        low = [(lift.relative - lift.relative_low) * 100 for _, lift in shown]
        high = [(lift.relative_high - lift.relative) * 100 for _, lift in shown]
        top.errorbar(x, y, yerr=[low, high], fmt="o", capsize=3, label="daily lift, 95% CI")
    total = report.total.lift
    title = f"{report.audience_key}: relative lift of treatment over holdout"
    if total.relative_defined:
        top.axhline(total.relative * 100, color="tab:green", label="total lift")
        top.axhspan(
            total.relative_low * 100, total.relative_high * 100, color="tab:green", alpha=0.15,
            label="total 95% CI (Katz log)",
        )  # fmt: skip
        title += (
            f"\ntotal {total.relative:+.1%} [{total.relative_low:+.1%}, {total.relative_high:+.1%}]"
        )
    top.axhline(0, color="black", linewidth=0.8)
    top.set_ylabel("lift (%)")
    top.set_title(title)
    top.legend(loc="best", fontsize="small")
    treated = [d.treatment.exposed for d in report.days]
    held = [d.holdout.exposed for d in report.days]
    bottom.bar(days, treated, width=0.8, label="treatment exposed")
    bottom.bar(days, held, width=0.8, bottom=treated, label="holdout exposed")
    srm = report.sample_ratio
    bottom.set_title(
        f"sample ratio: holdout {srm.observed_holdout_share:.1%} (expected "
        f"{srm.expected_holdout_share:.1%}), chi-square p = {srm.p_value:.3g}"
        + (" MISMATCH" if srm.mismatch else ""),
        fontsize="small",
    )
    bottom.set_ylabel("people")
    bottom.legend(loc="best", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `lift-chart` on the operator CLI."""
    chart = commands.add_parser("lift-chart", help="render an audience's lift over time to PNG")
    chart.add_argument("audience", help="audience key (it needs a goal)")
    chart.add_argument("--out", type=Path, default=Path("lift.png"))
    chart.add_argument("--days", type=int, default=30)
    chart.add_argument("--address", default="127.0.0.1:50052", help="segmentation host:port")
    chart.add_argument("--key", required=True, help="an admin API key of the workspace")
