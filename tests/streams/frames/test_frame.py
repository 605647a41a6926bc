"""StepFrame: columns of one job's steps, each rank at most once; frames_of cuts a sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankwatch.schemas import STEP_METRICS, StepEvent
from rankwatch.streams.frames import METRICS, StepFrame, frames_of


def _step(rank: int, step: int, **metrics: float) -> StepEvent:
    return StepEvent(job_id="j", rank=rank, step=step, timestamp=1.7e9 + step, **metrics)


def test_a_missing_value_is_told_apart_from_a_nan() -> None:
    frame = StepFrame.from_events([_step(0, 1, loss=math.nan), _step(1, 1), _step(2, 1, loss=2.0)])
    column = frame.metric("loss")
    assert column is not None
    values, present = column
    assert present.tolist() == [True, False, True]
    assert math.isnan(values[0]) and values[2] == 2.0
    assert frame.row(0).loss is not None and math.isnan(frame.row(0).loss)
    assert frame.row(1).loss is None


def test_rows_read_like_the_events_they_came_from() -> None:
    events = [_step(r, 7, loss=1.0 + r, gradient_norm=0.5, step_time_s=0.2) for r in range(3)]
    frame = StepFrame.from_events(events)
    for i, e in enumerate(events):
        row = frame.row(i)
        assert (row.job_id, row.rank, row.step, row.epoch) == (e.job_id, e.rank, e.step, e.epoch)
        for name in METRICS:
            assert getattr(row, name) == getattr(e, name)
    assert [r.loss for r in frame.rows_at(np.array([2, 0]))] == [3.0, 1.0]


def test_metrics_are_the_contracts_float_fields() -> None:
    assert METRICS == STEP_METRICS and "loss" in METRICS and "rank" not in METRICS


def test_a_frame_refuses_a_rank_twice_and_ragged_columns() -> None:
    with pytest.raises(ValueError, match="each rank at most once"):
        StepFrame.from_events([_step(0, 1), _step(0, 2)])
    one = np.array([0], dtype=np.int64)
    with pytest.raises(ValueError, match="as long as its ranks"):
        StepFrame("j", one, np.array([1, 2], dtype=np.int64), np.array([0.0]), {})
    with pytest.raises(ValueError, match="'speed' is not a step metric"):
        StepFrame("j", one, one, np.array([0.0]), {"speed": (np.array([1.0]), np.array([True]))})


def test_a_frame_is_one_jobs() -> None:
    other = StepEvent(job_id="k", rank=1, step=1, timestamp=0)
    with pytest.raises(ValueError, match="one job's"):
        StepFrame.from_events([_step(0, 1), other])


def test_frames_of_cuts_where_a_rank_comes_again() -> None:
    order = [(0, 1), (1, 1), (2, 1), (1, 2), (0, 2), (2, 2), (2, 3)]
    frames = list(frames_of([_step(r, s) for r, s in order]))
    assert [f.ranks.tolist() for f in frames] == [[0, 1, 2], [1, 0, 2], [2]]
    assert [f.steps.tolist() for f in frames] == [[1, 1, 1], [2, 2, 2], [3]]
    assert list(frames_of([])) == []


def test_from_columns_takes_rows_and_drops_metrics_none_of_them_carry() -> None:
    ranks = np.array([4, 5, 6], dtype=np.int64)
    steps = np.array([1, 1, 1], dtype=np.int64)
    times = np.array([1.0, 2.0, 3.0])
    metrics = {
        "loss": (np.array([1.0, np.nan, 3.0]), np.array([True, False, True])),
        "gradient_norm": (np.array([np.nan, 9.0, np.nan]), np.array([False, True, False])),
    }
    frame = StepFrame.from_columns("j", ranks, steps, times, metrics, np.array([2, 0]))
    assert frame.ranks.tolist() == [6, 4] and frame.times.tolist() == [3.0, 1.0]
    assert frame.metric("gradient_norm") is None
    loss = frame.metric("loss")
    assert loss is not None and loss[0].tolist() == [3.0, 1.0]
