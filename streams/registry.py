"""The built-in detectors, wired in one explicit place."""

from __future__ import annotations

from rankwatch.streams.detectors import crossrank, job_end, logs, loss_scale, metrics, stuck
from rankwatch.streams.engine import Detector


def builtin_detectors() -> list[Detector]:
    """Every built-in rule of CONTRACT.md, with its default thresholds."""
    return [
        *metrics.detectors(),
        *logs.detectors(),
        *loss_scale.detectors(),
        *crossrank.detectors(),
        *stuck.detectors(),
        *job_end.detectors(),
    ]
