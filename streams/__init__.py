"""Stream processing: the pure detector core, the Faust worker and replay.

The core (:class:`Engine` and the detectors) imports only :mod:`rankwatch.schemas`; faust is
imported only by the worker module, so replay and tests run without it.
"""

from rankwatch.streams.detectors.base import (
    JobDetector,
    JobState,
    LogDetector,
    RankState,
    StepDetector,
)
from rankwatch.streams.engine import Detector, Engine, EngineConfig
from rankwatch.streams.exceptions import DetectorConfigError, StreamsError
from rankwatch.streams.findings import Finding, Outcome, Resolution
from rankwatch.streams.incidents import IncidentPolicy

__all__ = [
    "Detector",
    "DetectorConfigError",
    "Engine",
    "EngineConfig",
    "Finding",
    "IncidentPolicy",
    "JobDetector",
    "JobState",
    "LogDetector",
    "Outcome",
    "RankState",
    "Resolution",
    "StepDetector",
    "StreamsError",
]
