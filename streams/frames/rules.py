"""How a per-rank rule runs on frames, and the scalar path it keeps for the rare rows.

A :class:`FrameRule` is a per-rank rule (a
:class:`~rankwatch.streams.detectors.base.StepDetector`) that also takes a whole
:class:`~rankwatch.streams.frames.StepFrame` at once: ``on_frame(job, table, frame)`` updates
the rows of ``table`` (the rule's :class:`~rankwatch.streams.frames.RankTable`) of the frame's
ranks and returns what it found as ``(row, outcome)`` pairs in row order.

The shape every such rule has: a **common path** in vector operations for the rows where the
scalar ``on_step`` would only fold the value into the state and find nothing (the healthy
steps, nearly all of them), and :func:`scalar_rows` for every other row, which runs the rule's
own ``on_step`` on that rank's row of the table. The scalar ``on_step`` stays the reference:
a rule's frame path is right when it gives the same outcomes and the same state, row for row
(:func:`rankwatch.streams.frames.testing.assert_frames_match_scalar`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Outcome
from rankwatch.streams.frames.frame import StepFrame
from rankwatch.streams.frames.table import RankTable

__all__ = ["FrameFindings", "FrameRule", "gather", "scalar_rows"]

#: What ``on_frame`` returns: (row of the frame, outcome), in row order.
FrameFindings = list[tuple[int, Outcome]]


@runtime_checkable
class FrameRule(Protocol):
    """A per-rank rule that runs on frames as well as on single steps."""

    name: ClassVar[str]
    #: The per-rank state dataclass: a rank's row of the table reads back as one.
    state_type: type[Any]

    def new_rank_state(self) -> Any: ...

    def on_step(
        self, job: JobState, rank: RankState, state: Any, event: Any
    ) -> Iterable[Outcome]: ...

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings: ...


def scalar_rows(
    rule: FrameRule,
    job: JobState,
    table: RankTable[Any],
    frame: StepFrame,
    rows: npt.NDArray[np.intp] | Iterable[int],
) -> FrameFindings:
    """Run the rule's scalar ``on_step`` on some rows of the frame (ascending), each on its
    rank's row of the table, written back after; returns their outcomes in row order.

    The rows' states and values are converted column by column (a frame holds each rank at
    most once, so the rows' states are distinct and are written back together)."""
    rows = np.asarray(rows, dtype=np.intp)
    if not len(rows):
        return []
    ranks = frame.ranks[rows]
    states = table.states_at(ranks)
    events = frame.rows_at(rows)
    out: FrameFindings = []
    on_step = rule.on_step
    known = job.ranks
    for i, r, state, event in zip(rows.tolist(), ranks.tolist(), states, events, strict=True):
        rank = known.get(r)
        if rank is None:
            rank = RankState(r)
        for outcome in on_step(job, rank, state, event):
            out.append((i, outcome))
    table.store_states(ranks, states)
    return out


def gather(table: RankTable[Any], frame: StepFrame, *names: str) -> list[npt.NDArray[Any]]:
    """The named columns of ``table`` at the frame's ranks (copies, one value per row)."""
    ranks = frame.ranks
    return [table.column(name)[ranks] for name in names]
