"""Cross-rank rules: ``straggler``, ``rank_silent``, ``hang`` (no progress), ``job_restarted``.

They are :class:`~rankwatch.streams.detectors.base.JobDetector` s: ``on_step`` keeps a few
numbers per rank or per job in O(1), ``on_tick`` judges the job in event time once per tick
(O(ranks) at most). The rules live in :mod:`~rankwatch.streams.detectors.straggler` and
:mod:`~rankwatch.streams.detectors.liveness`; this module wires their defaults.

>>> [d.name for d in detectors()]
['straggler', 'rank_silent', 'progress_hang', 'job_restarted']
"""

from __future__ import annotations

from typing import Any

from rankwatch.streams.detectors.lifecycle import JobRestarted, JobRestartedConfig
from rankwatch.streams.detectors.liveness import (
    ProgressHangConfig,
    ProgressHangDetector,
    RankSilentConfig,
    RankSilentDetector,
    StepPeriod,
)
from rankwatch.streams.detectors.straggler import StragglerConfig, StragglerDetector

__all__ = [
    "JobRestarted",
    "JobRestartedConfig",
    "ProgressHangConfig",
    "ProgressHangDetector",
    "RankSilentConfig",
    "RankSilentDetector",
    "StepPeriod",
    "StragglerConfig",
    "StragglerDetector",
    "detectors",
]


def detectors() -> list[Any]:
    """The cross-rank rules with their default thresholds (wired in by ``registry.py``)."""
    return [StragglerDetector(), RankSilentDetector(), ProgressHangDetector(), JobRestarted()]
