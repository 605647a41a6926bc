"""Check a rule's frame path against its scalar ``on_step``: same outcomes, same state.

Public, like :func:`rankwatch.streams.testing.capture_events`: a rule written for frames is
right when, over any sequence of steps, it finds what its scalar ``on_step`` finds, at the same
rows, with the same words and evidence, and leaves every rank with the same state.

>>> from rankwatch.schemas import StepEvent
>>> from rankwatch.streams.detectors.loss import LossExplosion
>>> steps = [StepEvent(job_id="j", rank=r, step=s, timestamp=1e9 + s, loss=2.0)
...          for s in range(30) for r in range(4)]
>>> assert_frames_match_scalar(LossExplosion(), steps)
0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from rankwatch.schemas import StepEvent
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Outcome
from rankwatch.streams.frames.frame import frames_of
from rankwatch.streams.frames.rules import FrameRule
from rankwatch.streams.frames.table import RankTable

__all__ = [
    "assert_frames_match_scalar",
    "assert_job_frames_match_scalar",
    "run_frames",
    "run_scalar",
]

_PLAIN = (bool, int, float, str, type(None))


def run_scalar(
    rule: FrameRule, events: Sequence[StepEvent]
) -> tuple[list[tuple[int, Outcome]], dict[int, Any]]:
    """Outcomes (event index, outcome) and the final state per rank, by ``on_step``."""
    job = _job(events)
    states: dict[int, Any] = {}
    out: list[tuple[int, Outcome]] = []
    for i, e in enumerate(events):
        state = states.get(e.rank)
        if state is None:
            state = states[e.rank] = rule.new_rank_state()
        for o in rule.on_step(job, job.ranks[e.rank], state, e):
            out.append((i, o))
    return out, states


def run_frames(
    rule: FrameRule, events: Sequence[StepEvent]
) -> tuple[list[tuple[int, Outcome]], RankTable[Any]]:
    """Outcomes (event index, outcome) and the rank table, by ``on_frame`` over the frames
    :func:`~rankwatch.streams.frames.frames_of` cuts the events into."""
    job = _job(events)
    table: RankTable[Any] = RankTable(rule.state_type)
    out: list[tuple[int, Outcome]] = []
    offset = 0
    for frame in frames_of(events):
        if len(frame):
            table.grow(int(frame.ranks.max()) + 1)
        for row, o in rule.on_frame(job, table, frame):
            out.append((offset + row, o))
        offset += len(frame)
    return out, table


def assert_frames_match_scalar(rule: FrameRule, events: Sequence[StepEvent]) -> int:
    """Run ``rule`` both ways over ``events`` (steps of one job, in the order applied) and
    raise ``AssertionError`` naming the first difference; returns how many outcomes matched.

    Rules are stateful only through their tables and rank states, so one instance can run
    both ways."""
    want, states = run_scalar(rule, events)
    got, table = run_frames(rule, events)
    for k, ((i, a), (j, b)) in enumerate(zip(want, got, strict=False)):
        if i != j or _plain(a) != _plain(b):
            raise AssertionError(
                f"outcome {k} differs: scalar at event {i}: {a!r}\nframes at event {j}: {b!r}"
            )
        _check_plain_types(b)
    if len(want) != len(got):
        extra = want[len(got) :] or got[len(want) :]
        side = "scalar" if len(want) > len(got) else "frames"
        raise AssertionError(
            f"{side} found {abs(len(want) - len(got))} more outcome(s), the first at event "
            f"{extra[0][0]}: {extra[0][1]!r}"
        )
    for r, state in states.items():
        row = table.row(r)
        if _plain(row) != _plain(state):
            raise AssertionError(f"rank {r}'s state differs:\nscalar {state!r}\nframes {row!r}")
    return len(want)


def assert_job_frames_match_scalar(
    rule: Any,
    events: Sequence[StepEvent],
    *,
    tick_interval_s: float = 1.0,
    frames_rule: Any = None,
) -> int:
    """A job-level rule's ``on_frame`` against its ``on_step``: ``events`` (steps of one job,
    in the order the engine applies them) are cut as the engine cuts them (a frame ends at a
    tick, after the first row of each new interval of event time, and where a rank comes
    again); one state takes ``on_step`` row by row, another ``on_frame`` frame by frame. After
    every frame the two states must be equal (:func:`rankwatch.streams.testing.state_difference`)
    and the rule's ``on_tick`` at a tick must give the same outcomes on both. Raises
    ``AssertionError`` naming the first difference; returns how many ticks gave outcomes.

    ``frames_rule``: another instance for the frame side (default: ``rule``), such as one that
    judges a small job on its columns (``lists_below = 0``) where ``rule`` reads live lists."""
    framed = rule if frames_rule is None else frames_rule
    from rankwatch.streams.frames.frame import StepFrame
    from rankwatch.streams.testing import state_difference

    job_a, job_b = _job(events), _job(events)
    for job in (job_a, job_b):
        job.world_size = max((e.world_size or 0 for e in events), default=0) or None
    state_a, state_b = rule.new_job_state(), framed.new_job_state()
    last_tick = -math.inf
    rows: list[StepEvent] = []
    seen: set[int] = set()
    outcomes = 0

    def frame_done(at: int) -> None:
        if rows:
            framed.on_frame(job_b, state_b, StepFrame.from_events(rows), list(rows))
        rows.clear()
        seen.clear()
        differ = state_difference(state_a, state_b, "state")
        if differ is not None:
            raise AssertionError(f"after event {at}: {differ}")

    for i, e in enumerate(events):
        if e.rank in seen:
            frame_done(i - 1)
        rule.on_step(job_a, job_a.ranks[e.rank], state_a, e)
        rows.append(e)
        seen.add(e.rank)
        now = e.epoch
        if now - last_tick >= tick_interval_s:
            frame_done(i)
            last_tick = now - now % tick_interval_s
            a = list(rule.on_tick(job_a, state_a, now))
            b = list(framed.on_tick(job_b, state_b, now))
            if _plain(a) != _plain(b):
                raise AssertionError(f"tick at event {i}: scalar {a!r}\nframes {b!r}")
            outcomes += bool(a)
    frame_done(len(events) - 1)
    return outcomes


def _job(events: Sequence[StepEvent]) -> JobState:
    job = JobState(events[0].job_id if events else "")
    for e in events:
        if e.rank not in job.ranks:
            job.ranks[e.rank] = RankState(e.rank, e.host)
    return job


def _plain(value: Any) -> Any:
    """A comparable form: NaN equal to NaN, dataclasses as their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            *(_plain(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check_plain_types(outcome: Outcome) -> None:
    """Findings go on to JSON and to people: no numpy scalars in them."""
    for f in dataclasses.fields(outcome):
        _plain_value(f"{type(outcome).__name__}.{f.name}", getattr(outcome, f.name))


def _plain_value(where: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _plain_value(f"{where}[{k!r}]", v)
    elif isinstance(value, list | tuple):
        for v in value:
            _plain_value(where, v)
    elif type(value) not in _PLAIN:
        raise AssertionError(f"{where} is a {type(value).__name__}, not a plain Python value")
