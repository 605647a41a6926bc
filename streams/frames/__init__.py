"""Per-step frames: a job's released steps as columns, per-rank state as arrays.

The columnar form of the detector path (issue 14): :class:`StepFrame` (rows of one job, each
rank at most once), :class:`RankTable` (a rule's per-rank state as columns indexed by rank),
:class:`RankEntries` (a job rule's entry per rank, the same way),
:class:`FrameRule` (a per-rank rule with ``on_frame``) and :func:`scalar_rows` (the scalar path
it keeps for the rare rows). :mod:`rankwatch.streams.frames.testing` checks a frame path
against the scalar rule it stands for.
"""

from rankwatch.streams.frames.entries import RankEntries
from rankwatch.streams.frames.frame import METRICS, StepFrame, StepRow, frames_of
from rankwatch.streams.frames.rounds import rounds
from rankwatch.streams.frames.rules import FrameFindings, FrameRule, gather, scalar_rows
from rankwatch.streams.frames.table import RankTable

__all__ = [
    "METRICS",
    "FrameFindings",
    "FrameRule",
    "RankEntries",
    "RankTable",
    "StepFrame",
    "StepRow",
    "frames_of",
    "gather",
    "rounds",
    "scalar_rows",
]
