"""The engine's columnar step path: a decoded batch's step rows in, frames to the rules.

:class:`ColumnarSteps` is part of :class:`~rankwatch.streams.engine.Engine` (a mixin: the engine
is one object, this module one concern of it). At arrival, :meth:`~ColumnarSteps.process_columns`
takes one job's step rows of a batch decoded by :func:`~rankwatch.schemas.columns.decode_batch`:
the common row's bookkeeping in one pass, the per-rank rules that have a frame path
(``on_frame``, :mod:`rankwatch.streams.frames`) over all the rows at once, cut into rounds
(each rank once per round); every other row goes through ``Engine.process`` in its place. The
per-rank frame rules keep their state in the job's rank tables (``JobState.tables``); the scalar
path checks a rank's state out into its slots and the next frame puts it back. At release,
:meth:`~ColumnarSteps._frame` runs the job rules that have a frame path once per frame
of released steps (``Engine._apply_ready``).

The alerts are those of ``Engine.process`` of each event in turn, ids included: the tests
check it row for row (``tests/streams/test_engine.py``, ``tests/streams/test_pipeline.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rankwatch.schemas import Alert, StepEvent
from rankwatch.schemas.columns import StepColumns
from rankwatch.schemas.records import ColumnRow, StepRecord, records
from rankwatch.streams.detectors.base import JobState, RankState
from rankwatch.streams.findings import Outcome
from rankwatch.streams.frames import RankTable, StepFrame, rounds
from rankwatch.streams.frames.table import dense_limit
from rankwatch.streams.ordering import Held, StepOrder

if TYPE_CHECKING:
    from rankwatch.schemas import LogEvent
    from rankwatch.streams.engine import EngineConfig, _Kinds

_NEG_INF = float("-inf")


class ColumnarSteps:
    """The columnar step path of :class:`~rankwatch.streams.engine.Engine` (see the module)."""

    if TYPE_CHECKING:  # what it uses of the engine
        config: EngineConfig
        jobs: dict[str, JobState]
        _bound: dict[str, _Kinds]
        _orders: dict[str, StepOrder]
        _heard: dict[str, float]
        _awake: float

        def _enter(self, job_id: str) -> tuple[JobState, _Kinds]: ...
        def process(self, event: StepEvent | LogEvent | StepRecord) -> list[Alert]: ...
        def _order_for(self, job: JobState) -> StepOrder: ...
        def _release(
            self,
            job: JobState,
            kinds: _Kinds,
            order: StepOrder,
            out: list[Alert],
            low: float | None = None,
        ) -> None: ...
        def _apply(self, job: JobState, outcomes: Iterable[Outcome], out: list[Alert]) -> None: ...
        def _tick(self, job: JobState, kinds: _Kinds, out: list[Alert], now: float) -> None: ...

    @staticmethod
    def _check_out(job: JobState, kinds: _Kinds, rank: RankState, name: str) -> Any:
        """A frame rule's state of one rank, for the scalar path: from its table into the
        rank's slots (where the scalar path keeps it until the next frame)."""
        table = job.tables.get(name)
        r = rank.rank
        state = table.row(r) if table is not None and r < len(table) else kinds.fresh[name]()
        rank.slots[name] = state
        job.checked_out.add(r)
        return state

    @staticmethod
    def _check_in(job: JobState, kinds: _Kinds, size: int) -> dict[str, RankTable[Any]]:
        """The job's rank tables, every rank up to ``size - 1`` in them, with the states the
        scalar path took out put back."""
        tables = job.tables
        out = job.checked_out
        far: list[int] = []
        if out:
            limit = dense_limit(len(job.ranks))
            far = [r for r in out if r >= limit]  # no row: their state stays in their slots
            if far:
                out.difference_update(far)
        if out:
            size = max(size, max(out) + 1)
        for name, rule in kinds.tabled.items():
            table = tables.get(name)
            if table is None:
                table = tables[name] = RankTable(rule.state_type)
            table.grow(size, job.world_size)
        if out:
            ranks = job.ranks
            for r in out:
                rs = ranks.get(r)
                if rs is None:
                    continue
                slots = rs.slots
                for name in kinds.tabled:
                    state = slots.pop(name, None)
                    if state is not None:
                        tables[name].store(r, state)
            out.clear()
        out.update(far)
        return tables

    def process_columns(
        self, cols: StepColumns, rows: Sequence[int] | npt.NDArray[np.intp]
    ) -> list[Alert]:
        """Apply step rows of one job from a decoded batch (``rows``: indices into ``cols``
        in arrival order, with no log record of the job between them): the same as
        :meth:`process` of each row's event in turn, in a fraction of its time.

        The common row (a training step of a known rank, the job's attempt and size, newer
        than its rank's last) takes the columnar path: its rank's bookkeeping, then the
        per-rank frame rules over the rows at once (cut into rounds, each rank once per
        round; they read nothing of the job, so the cut changes nothing they find), then it
        is held as :meth:`process` holds it. Every other row (a rank's first step, a new
        attempt, an evaluation step, a duplicate, a rare spelling) goes through
        :meth:`process` itself, in its place.
        """
        out: list[Alert] = []
        if not len(rows):
            return out
        index = np.asarray(rows, dtype=np.intp)
        positions = index.tolist()
        job_id = cols.job_ids[positions[0]]
        ranks_l = cols.ranks[index].tolist()
        steps_l = cols.steps[index].tolist()
        times_l = cols.times[index].tolist()
        attempts, phases, worlds, rare = cols.attempts, cols.phases, cols.world_sizes, cols.rare
        job = self.jobs.get(job_id)
        kinds = self._bound.get(job_id)
        if job is None or kinds is None:
            job, kinds = self._enter(job_id)
        if len(job.ranks) < self.config.columnar_from_ranks:
            # A small job: frames of a few rows cost more than they save. Row by row, each
            # a record (no StepEvent built; a rare row is its StepEvent).
            for event in records(cols, index):
                out += self.process(event)
            return out
        # What is held of a common row: a reference to its columns, read again only in rare
        # cases (see ColumnRow). A row that goes through process() is its record.
        events = list(map(ColumnRow, repeat(cols), positions))
        self._heard[job_id] = self._awake
        known = job.ranks
        limit = dense_limit(len(known))  # a rank beyond: no row in the tables (frames.table)
        common: list[int] = []  # positions in rows of the common rows not applied yet
        for k, i in enumerate(positions):
            rank = known.get(ranks_l[k])
            attempt = attempts[i]
            phase = phases[i]
            world = worlds[i]
            step = steps_l[k]
            now = times_l[k]
            if (
                rank is None
                or ranks_l[k] >= limit
                or step <= rank.got_step
                or (attempt is not None and attempt != job.reported_attempt)
                or (phase is not None and phase != "train")
                or (world is not None and world != job.world_size)
                or now <= job.attempt_floor
                or i in rare
            ):
                if common:
                    self._arrive(job, kinds, cols, index, common, events, out)
                    common = []
                out += self.process(events[k].record())
                job, kinds = self.jobs[job_id], self._bound[job_id]  # a new attempt: new ones
                known = job.ranks
                continue
            rank.got_step = step
            rank.got_step_time = now
            common.append(k)
        if common:
            self._arrive(job, kinds, cols, index, common, events, out)
        return out

    def _arrive(
        self,
        job: JobState,
        kinds: _Kinds,
        cols: StepColumns,
        index: npt.NDArray[np.intp],
        common: list[int],
        every: list[Any],
        out: list[Alert],
    ) -> None:
        """The common rows (positions ``common`` of ``index``; ``every`` the held rows of
        all of ``index``, :class:`ColumnRow`), their ranks' bookkeeping done: the per-rank
        rules over them, then each held, and the job's steps released when a round of
        arrivals is due (as :meth:`process` does)."""
        at = index[common]
        ranks = cols.ranks[at]
        found: dict[int, list[Outcome]] = {}
        events = [every[k] for k in common]
        if len(kinds.tabled) < len(kinds.step):
            # A per-rank rule without a frame path reads each row's values: the records of
            # all the rows at once, kept in the held rows (one record per row).
            made = records(cols, at)
            events = list(map(ColumnRow, repeat(cols), at.tolist(), made))
        if kinds.step:
            tables = self._check_in(job, kinds, int(ranks.max()) + 1)
            by_rank = job.ranks
            for rows in rounds(ranks) if len(at) > 1 else [np.zeros(1, dtype=np.intp)]:
                frame = StepFrame.from_columns(
                    job.job_id, cols.ranks, cols.steps, cols.times, cols.metrics, at[rows]
                )
                for d in kinds.step:
                    if d.name in kinds.tabled:
                        table = tables[d.name]
                        for i, outcome in kinds.tabled[d.name].on_frame(job, table, frame):
                            found.setdefault(int(rows[i]), []).append(outcome)
                        continue
                    for p in rows.tolist():  # a rule without a frame path: row by row
                        event = events[p]
                        rank = by_rank[event.rank]
                        for outcome in d.on_step(job, rank, rank.slots[d.name], event):
                            found.setdefault(p, []).append(outcome)
        order = self._orders.get(job.job_id)
        if order is None or order.job is not job:
            order = self._order_for(job)
        by_rank = job.ranks
        worlds = cols.world_sizes
        rank_list = ranks.tolist()
        held_of = [by_rank[r].held for r in rank_list]
        times = cols.times[at].tolist()
        steps = cols.steps[at].tolist()
        announced = [worlds[i] for i in at.tolist()]
        k, n = 0, len(rank_list)
        while k < n:
            k = order.hold_rows(held_of, times, rank_list, steps, events, found, announced, k)
            if order.due <= 0:
                self._release(job, kinds, order, out)

    @staticmethod
    def _frame(job: JobState, framed: list[tuple[Any, Any]], rows: list[Held]) -> None:
        """The job rules' ``on_frame`` over some released rows (each rank once); ``framed``:
        ``(rule, its job state)``."""
        if not rows:
            return
        events = [e[4] for e in rows]
        try:
            ranks = np.array([e[1] for e in rows], dtype=np.int64)
            steps = np.array([e[2] for e in rows], dtype=np.int64)
        except OverflowError:
            # A rank or step past int64 (the contract refuses one; an event built without
            # validation can hold one): these rows row by row.
            for _, rank, _, _, event, _ in rows:
                for rule, slot in framed:
                    rule.on_step(job, job.ranks[rank], slot, event)
            return
        times = np.array([e[0] for e in rows], dtype=np.float64)
        frame = StepFrame.of_events(job.job_id, ranks, steps, times, events)
        for rule, slot in framed:
            rule.on_frame(job, slot, frame, events)
