"""scalar_rows runs a rule's own on_step on chosen rows; the parity checker catches any drift."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rankwatch.schemas import StepEvent
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.detectors.loss import LossExplosion, LossExplosionConfig
from rankwatch.streams.frames import FrameFindings, RankTable, StepFrame, scalar_rows
from rankwatch.streams.frames.testing import assert_frames_match_scalar


def _steps(losses: list[float], ranks: int = 3) -> list[StepEvent]:
    return [
        StepEvent(job_id="j", rank=r, step=s, timestamp=1e9 + s, loss=x)
        for s, x in enumerate(losses)
        for r in range(ranks)
    ]


def test_scalar_rows_runs_on_step_on_the_rows_given_only() -> None:
    rule = LossExplosion(LossExplosionConfig(warmup_steps=1))
    events = [
        StepEvent(job_id="j", rank=r, step=1, timestamp=1e9, loss=float("nan")) for r in (5, 2)
    ]
    frame = StepFrame.from_events(events)
    table: RankTable[Any] = RankTable(rule.state_type, capacity=6)
    job = JobState("j", ranks={2: RankState(2, host="gpu-2")})
    found = scalar_rows(rule, job, table, frame, np.array([1]))
    assert [(row, o.rank) for row, o in found] == [(1, 2)]  # rank 2's row: a NaN fires at once
    assert table.row(2).nonfinite == 1 and table.row(5).nonfinite == 0  # row 0 not run
    assert scalar_rows(rule, job, table, frame, []) == []


class _Drifting(LossExplosion):
    """A frame path that gets the arithmetic slightly wrong: the checker must say so."""

    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        found = super().on_frame(job, table, frame)
        table.column("level")[frame.ranks] *= 1.0 + 1e-12
        return found


class _Silent(LossExplosion):
    def on_frame(self, job: JobState, table: RankTable[Any], frame: StepFrame) -> FrameFindings:
        super().on_frame(job, table, frame)
        return []


def test_the_checker_names_a_state_that_drifted() -> None:
    with pytest.raises(AssertionError, match="rank 0's state differs"):
        assert_frames_match_scalar(_Drifting(), _steps([2.0] * 10))


def test_the_checker_names_an_outcome_the_frame_path_lost() -> None:
    with pytest.raises(AssertionError, match="scalar found 3 more outcome"):
        assert_frames_match_scalar(_Silent(), _steps([2.0] * 25 + [float("nan")]))


def test_the_checker_passes_the_real_rule() -> None:
    assert assert_frames_match_scalar(LossExplosion(), _steps([2.0] * 25 + [float("nan")])) == 3
