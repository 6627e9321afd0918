"""The chart command draws calibration and lift charts to PNG files off-screen."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scripts.prediction_charts import Curve, render_calibration, render_lift
from services.prediction import metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_calibration_and_lift_charts_are_png_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    p = rng.random(2_000) ** 3
    y = (rng.random(2_000) < p).astype(np.float64)
    curves = [
        Curve("model", metrics.calibration_by_decile(y, p)),
        Curve("baseline", metrics.calibration_by_decile(y, np.sqrt(p))),
    ]
    render_calibration(curves, "synthetic", tmp_path / "calibration.png")
    render_lift(curves, "synthetic", tmp_path / "lift.png")
    for name in ("calibration.png", "lift.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
