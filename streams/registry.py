"""The built-in detectors, wired in one explicit place."""

from __future__ import annotations

from rankwatch.streams.detectors import (
    crossrank,
    gradient_desync,
    gradient_vanishing,
    job_end,
    logs,
    loss_scale,
    metrics,
    stuck,
    utilization,
)
from rankwatch.streams.detectors.lr_schedule import LrSchedule
from rankwatch.streams.engine import Detector


def builtin_detectors() -> list[Detector]:
    """Every built-in rule of CONTRACT.md, with its default thresholds."""
    return [
        *metrics.detectors(),
        *logs.detectors(),
        *loss_scale.detectors(),
        *crossrank.detectors(),
        *utilization.detectors(),
        gradient_vanishing.GradientVanishing(),
        gradient_desync.GradientDesync(),
        *stuck.detectors(),
        *job_end.detectors(),
        LrSchedule(),
    ]
