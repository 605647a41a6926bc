"""The per-rank metric rules, with their default thresholds (wired by ``registry.py``).

Each rule lives in its own module with its config dataclass:

- ``loss_explosion``: :mod:`.loss`
- ``gradient_explosion``: :mod:`.gradient`
- ``throughput_drop``: :mod:`.throughput`
- ``memory_growth``: :mod:`.memory`
"""

from __future__ import annotations

from rankwatch.streams.detectors.base import StepDetector
from rankwatch.streams.detectors.gradient import GradientExplosion, GradientExplosionConfig
from rankwatch.streams.detectors.loss import LossExplosion, LossExplosionConfig
from rankwatch.streams.detectors.memory import MemoryGrowth, MemoryGrowthConfig
from rankwatch.streams.detectors.throughput import ThroughputDrop, ThroughputDropConfig

__all__ = [
    "GradientExplosion",
    "GradientExplosionConfig",
    "LossExplosion",
    "LossExplosionConfig",
    "MemoryGrowth",
    "MemoryGrowthConfig",
    "ThroughputDrop",
    "ThroughputDropConfig",
    "detectors",
]


def detectors() -> list[StepDetector]:
    """One instance of each per-rank metric rule, with default configs."""
    return [LossExplosion(), GradientExplosion(), ThroughputDrop(), MemoryGrowth()]
