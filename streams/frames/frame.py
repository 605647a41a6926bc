"""A per-step frame: the step events of one job released together, as columns.

Every rank of a job reports every step, so a released step is a column of values across ranks.
A :class:`StepFrame` holds such rows in the order the engine applies them (event time, then
rank), with **each rank at most once**: a rule can then update the state of every rank of the
frame with one vector operation, and no two updates of one rank's state can collide.
:func:`frames_of` cuts a sequence of rows into such frames.

A metric is read as ``(values, present)``: float64 values, and a mask of the rows that carry
the metric at all. A missing value and a NaN loss are different facts (one says nothing, the
other is an explosion), so a missing value is never written as NaN alone.

Rules keep a scalar path for the rare rows (a warm-up, a step that confirms an incident); it
reads :meth:`StepFrame.row`, a light object with the attributes of a
:class:`~rankwatch.schemas.StepEvent` that rules read (``step``, ``epoch``, the metrics), so
the scalar rule code runs unchanged on it.

>>> from rankwatch.schemas import StepEvent
>>> events = [StepEvent(job_id="j", rank=r, step=5, timestamp=100 + r, loss=2.0 + r)
...           for r in (1, 0)]
>>> frame = StepFrame.from_events(events)
>>> frame.ranks.tolist(), frame.steps.tolist()
([1, 0], [5, 5])
>>> values, present = frame.metric("loss")
>>> values.tolist(), present.tolist(), frame.metric("gradient_norm") is None
([3.0, 2.0], [True, True], True)
>>> frame.row(1).loss, frame.row(1).gradient_norm, frame.row(1).epoch
(2.0, None, 100.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import STEP_METRICS, StepEvent
from rankwatch.schemas.records import origins

__all__ = ["METRICS", "StepFrame", "StepRow", "frames_of"]

#: The metrics a frame can carry: every float field of the contract's step event.
METRICS: tuple[str, ...] = STEP_METRICS

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


class StepRow:
    """One row of a frame, read like a :class:`~rankwatch.schemas.StepEvent` by the scalar
    rule code: ``job_id``, ``rank``, ``step``, ``epoch`` and every metric (``None`` where the
    row has none). Made only for the rows that take a rule's slow path; a metric is read from
    the frame's column when asked for (a rule reads one or two of the thirteen)."""

    __slots__ = ("_columns", "_i", "epoch", "job_id", "rank", "step")

    def __init__(
        self,
        job_id: str,
        rank: int,
        step: int,
        epoch: float,
        columns: Mapping[str, tuple[Floats, Mask]],
        i: int,
    ) -> None:
        self.job_id = job_id
        self.rank = rank
        self.step = step
        self.epoch = epoch
        self._columns = columns
        self._i = i

    def __getattr__(self, name: str) -> float | None:
        # Called only for names that are not slots: the metrics.
        if name not in _METRIC_SET:
            raise AttributeError(f"a step row has no {name!r}")
        column = self._columns.get(name)
        if column is None or not column[1][self._i]:
            return None
        return float(column[0][self._i])

    def __repr__(self) -> str:
        given = [f"{m}={getattr(self, m)!r}" for m in METRICS if getattr(self, m) is not None]
        head = f"job_id={self.job_id!r}, rank={self.rank}, step={self.step}, epoch={self.epoch}"
        return f"StepRow({', '.join([head, *given])})"


@dataclass(frozen=True, slots=True)
class StepFrame:
    """Rows of one job's steps, each rank at most once, in the order they are applied.

    ``columns`` maps a metric to ``(values, present)``; a metric no row carries is absent.
    """

    job_id: str
    ranks: Ints
    steps: Ints
    times: Floats
    columns: Mapping[str, tuple[Floats, Mask]]

    def __post_init__(self) -> None:
        n = len(self.ranks)
        if len(self.steps) != n or len(self.times) != n:
            raise ValueError(
                f"a frame's columns must be as long as its ranks ({n}): steps "
                f"{len(self.steps)}, times {len(self.times)}"
            )
        for name, (values, present) in self.columns.items():
            if name not in _METRIC_SET:
                raise ValueError(f"{name!r} is not a step metric (known: {', '.join(METRICS)})")
            if len(values) != n or len(present) != n:
                raise ValueError(f"metric {name!r} has {len(values)} values for {n} rows")
        if n and len(np.unique(self.ranks)) != n:
            raise ValueError("a frame holds each rank at most once (cut it with frames_of)")

    def __len__(self) -> int:
        return len(self.ranks)

    def metric(self, name: str) -> tuple[Floats, Mask] | None:
        """``(values, present)`` of one metric, or ``None`` when no row carries it."""
        return self.columns.get(name)

    def row(self, i: int) -> StepRow:
        """Row ``i`` as an event-like object, for a rule's scalar path."""
        i = int(i)
        return StepRow(
            self.job_id,
            int(self.ranks[i]),
            int(self.steps[i]),
            float(self.times[i]),
            self.columns,
            i,
        )

    def rows_at(self, rows: npt.NDArray[np.intp]) -> list[StepRow]:
        """:meth:`row` of several rows."""
        job_id, columns = self.job_id, self.columns
        return [
            StepRow(job_id, r, s, t, columns, i)
            for r, s, t, i in zip(
                self.ranks[rows].tolist(),
                self.steps[rows].tolist(),
                self.times[rows].tolist(),
                rows.tolist(),
                strict=True,
            )
        ]

    @classmethod
    def from_events(cls, events: Sequence[StepEvent]) -> StepFrame:
        """The frame of ``events`` (one job, each rank once), rows in their given order."""
        if not events:
            return cls.empty("")
        job_id = events[0].job_id
        for e in events:
            if e.job_id != job_id:
                raise ValueError(f"a frame is one job's: {e.job_id!r} among {job_id!r}")
        n = len(events)
        columns: dict[str, tuple[Floats, Mask]] = {}
        for name in METRICS:
            got = [getattr(e, name) for e in events]
            present = np.fromiter((v is not None for v in got), dtype=np.bool_, count=n)
            if not present.any():
                continue
            values = np.fromiter(
                (np.nan if v is None else v for v in got), dtype=np.float64, count=n
            )
            columns[name] = (values, present)
        return cls(
            job_id,
            np.fromiter((e.rank for e in events), dtype=np.int64, count=n),
            np.fromiter((e.step for e in events), dtype=np.int64, count=n),
            np.fromiter((e.epoch for e in events), dtype=np.float64, count=n),
            columns,
        )

    @classmethod
    def from_columns(
        cls,
        job_id: str,
        ranks: Ints,
        steps: Ints,
        times: Floats,
        metrics: Mapping[str, tuple[Floats, Mask]],
        rows: npt.NDArray[np.intp],
    ) -> StepFrame:
        """The frame of some rows of decoded columns: one job's rows of a batch, each rank at
        most once (a round of :func:`~rankwatch.streams.frames.rounds`). Numpy takes, no
        Python work per row, and the checks of the constructor left out: on this path, once
        per released round, the distinct-ranks check alone cost ~0.08 us a row (np.unique of
        1,000 ranks: 81 us), a twentieth of the five rules' work."""
        columns: dict[str, tuple[Floats, Mask]] = {}
        for name, (values, present) in metrics.items():
            given = present[rows]
            if given.any():
                columns[name] = (values[rows], given)
        return cls._unchecked(job_id, ranks[rows], steps[rows], times[rows], columns)

    @classmethod
    def of_events(
        cls, job_id: str, ranks: Ints, steps: Ints, times: Floats, events: Sequence[Any]
    ) -> StepFrame:
        """The frame of released rows whose ranks, steps and times are at hand, each metric
        column read from the rows' events when a rule first asks for it (a job rule reads a
        few of the eleven)."""
        return cls._unchecked(job_id, ranks, steps, times, _EventColumns(events))

    @classmethod
    def _unchecked(
        cls,
        job_id: str,
        ranks: Ints,
        steps: Ints,
        times: Floats,
        columns: Mapping[str, tuple[Floats, Mask]],
    ) -> StepFrame:
        """A frame without the constructor's checks (the engine's paths build it right)."""
        frame = object.__new__(cls)
        for name, value in (
            ("job_id", job_id),
            ("ranks", ranks),
            ("steps", steps),
            ("times", times),
            ("columns", columns),
        ):
            object.__setattr__(frame, name, value)
        return frame

    @classmethod
    def empty(cls, job_id: str) -> StepFrame:
        none_i: Ints = np.zeros(0, dtype=np.int64)
        none_f: Floats = np.zeros(0, dtype=np.float64)
        return cls(job_id, none_i, none_i, none_f, {})


_METRIC_SET = frozenset(METRICS)


class _EventColumns(Mapping[str, tuple[Floats, Mask]]):
    """A frame's metric columns, each read from the events on first use; a metric no row
    carries is absent (as in a frame's ``columns``)."""

    __slots__ = ("_events", "_made", "_origins")

    def __init__(self, events: Sequence[Any]) -> None:
        self._events = events
        self._made: dict[str, tuple[Floats, Mask] | None] = {}
        self._origins: Any = None

    def __getitem__(self, name: str) -> tuple[Floats, Mask]:
        column: tuple[Floats, Mask] | None = self.get(name)
        if column is None:
            raise KeyError(name)
        return column

    def get(self, name: str, default: Any = None) -> Any:
        made = self._made
        if name in made:
            column = made[name]
            return default if column is None else column
        if name not in _METRIC_SET:
            made[name] = None
            return default
        if self._origins is None:
            self._origins = origins(self._events)
        groups, rest = self._origins
        n = len(self._events)
        values = np.full(n, np.nan)
        present = np.zeros(n, dtype=np.bool_)
        for columns, at, rows in groups:  # records of decoded batches: one take per batch
            column = columns.metrics.get(name)
            if column is not None:
                given = column[1][rows]
                values[at] = np.where(given, column[0][rows], np.nan)  # absent: a plain NaN
                present[at] = given
        events = self._events
        for i in rest:  # events of their own
            value = getattr(events[i], name)
            if value is not None:
                values[i] = value
                present[i] = True
        if not present.any():
            made[name] = None
            return default
        made[name] = (values, present)
        return made[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in METRICS if self.get(name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def frames_of(events: Sequence[StepEvent]) -> Iterator[StepFrame]:
    """Cut one job's step events (in the order they are applied) into frames: a new frame
    starts where a rank comes again, so each frame holds each rank at most once.

    >>> from rankwatch.schemas import StepEvent
    >>> steps = [StepEvent(job_id="j", rank=r, step=s, timestamp=s) for s, r in
    ...          [(1, 0), (1, 1), (2, 0), (2, 1), (3, 1)]]
    >>> [f.ranks.tolist() for f in frames_of(steps)]
    [[0, 1], [0, 1], [1]]
    """
    start = 0
    seen: set[int] = set()
    for i, e in enumerate(events):
        if e.rank in seen:
            yield StepFrame.from_events(events[start:i])
            start = i
            seen.clear()
        seen.add(e.rank)
    if start < len(events):
        yield StepFrame.from_events(events[start:])
