"""Raw messages in, alerts and dead letters out: the step shared by the worker and replay.

:class:`Pipeline` decodes each message with the contract's :func:`~rankwatch.schemas.decode`
and feeds the :class:`~rankwatch.streams.Engine`. A message that does not decode, or that is
not a step or log event, becomes a :class:`DeadLetter` carrying the reason; processing goes on.
The worker and ``rankwatch replay`` run this same code, so the same input gives the same
alerts, ids included.

>>> from rankwatch.streams import Engine
>>> p = Pipeline(Engine([]))
>>> p.handle(b'{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":0}')
[]
>>> p.handle(b'{"kind":"step","job_id":"j","rank":-1,"step":1,"timestamp":0}').error
'rank: Input should be greater than or equal to 0 (got -1)'
"""

from __future__ import annotations

import base64
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from rankwatch.schemas import Alert, EventDecodeError, FieldProblem, LogEvent, StepEvent, decode
from rankwatch.schemas.columns import StepColumns, decode_batch
from rankwatch.streams.detectors.base import JobState
from rankwatch.streams.engine import Engine
from rankwatch.streams.state_codec import DEFAULT_RANKS_PER_CHUNK

log = logging.getLogger(__name__)

_INPUT = (StepEvent, LogEvent)  # a tuple: isinstance is quicker with it than with a union

#: Looks a job up in persistent state the first time the engine meets it (or None).
Restore = Callable[[str], JobState | None]

#: Bytes of a bad message's payload kept in its dead letter (base64 may grow it by a third).
MAX_DEAD_PAYLOAD = 256 * 1024


def _internal_error(exc: Exception) -> FieldProblem:
    """The reason a dead letter gives for an event the engine failed on."""
    return FieldProblem("", f"internal error in the detector engine: {exc!r}")


@dataclass(slots=True)
class DeadLetter:
    """A message that could not be processed, and why."""

    error: str
    problems: list[FieldProblem]
    payload: bytes
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """The value written to the dead-letter topic (a JSON object).

        A payload over :data:`MAX_DEAD_PAYLOAD` bytes is cut there (``payload_truncated``,
        ``payload_bytes`` says how big it was): the dead letter of a 10 MB message must still
        fit the producer's 1 MB request limit, or sending it would stop the worker.
        """
        raw = self.payload[:MAX_DEAD_PAYLOAD]
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        key = None if self.key is None else self.key.decode("utf-8", "backslashreplace")
        extra: dict[str, Any] = {}
        if len(self.payload) > MAX_DEAD_PAYLOAD:
            extra = {"payload_truncated": True, "payload_bytes": len(self.payload)}
        return {
            "error": self.error,
            "problems": [{"field": p.field, "problem": p.problem} for p in self.problems],
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": key,
            "payload": payload,
            "payload_encoding": encoding,
            **extra,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())


@dataclass(slots=True)
class Stats:
    """What went through a pipeline: for logs and the replay summary."""

    events: int = 0
    bad: int = 0
    alerts: Counter[str] = field(default_factory=Counter)

    def count(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.alerts[f"{alert.rule}/{alert.status}"] += 1


class Pipeline:
    """Decode, hand to the engine, dead-letter what does not fit, track what changed.

    ``restore`` is asked for a job's state the first time a job id is met (the worker reads
    it from its table). ``dirty`` maps each job touched since :meth:`take_dirty` to the rank
    chunks that had events, so the worker persists only those; ``partition_of`` remembers the
    input partition of each job, where its state is persisted.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        restore: Restore | None = None,
        ranks_per_chunk: int = DEFAULT_RANKS_PER_CHUNK,
    ) -> None:
        self.engine = engine
        self.restore = restore
        self.ranks_per_chunk = ranks_per_chunk
        self.dirty: dict[str, set[int]] = {}
        # The engine applies held steps of other ranks than the event's: it lists them here.
        engine.released = []
        self.partition_of: dict[str, int] = {}
        self.stats = Stats()
        #: Replay's worker clock (see :meth:`feed_clock_from_events`).
        self._clock_next: float | None = None

    def handle(
        self,
        value: bytes | str,
        *,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
        key: bytes | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> list[Alert] | DeadLetter:
        """Process one message: the alerts it caused, or a dead letter saying why not."""
        raw = value.encode() if isinstance(value, str) else value
        try:
            event = decode(raw, defaults=defaults)
        except EventDecodeError as exc:
            return self._dead(str(exc), exc.problems, raw, topic, partition, offset, key)
        if not isinstance(event, _INPUT):
            problem = FieldProblem("kind", f"{event.kind!r} is not an input event (step or log)")
            return self._dead(str(problem), [problem], raw, topic, partition, offset, key)
        self.stats.events += 1
        early: list[Alert] = []
        if self._clock_next is not None and event.epoch >= self._clock_next:
            # Replay's stand-in for the worker's clock: time has come to this event; jobs
            # that said nothing meanwhile are judged before it, as they were live.
            self._clock_next = event.epoch + 1.0
            early = self.engine.advance_clock(event.epoch, max_step=math.inf)
            self.note_released()
        job_id = event.job_id
        engine = self.engine
        self._meet(job_id, partition).add(event.rank // self.ranks_per_chunk)
        try:
            alerts = engine.process(event)
        except Exception as exc:
            # A detector bug must not stop the stream for every job: the event is kept in the
            # dead-letter topic for a replay once the bug is fixed.
            log.exception("engine failed on %s offset %s (job %s)", topic, offset, job_id)
            problem = _internal_error(exc)
            self.stats.events -= 1
            if engine.released:
                self._mark(engine.released)
            return self._dead(str(problem), [problem], raw, topic, partition, offset, key)
        released = engine.released
        if released:
            # Steps held back and applied now changed their ranks' state: snapshot those too.
            self._mark(released)
        if early:
            alerts = early + alerts
        if alerts:
            self.stats.count(alerts)
        return alerts

    def handle_batch(
        self, values: Sequence[bytes | str], *, partitions: Sequence[int] | None = None
    ) -> tuple[list[Alert], list[tuple[int, DeadLetter]]]:
        """Process a batch of messages: what :meth:`handle` of each in turn does, with the
        step events decoded and applied as columns (:func:`~rankwatch.schemas.decode_batch`,
        :meth:`Engine.process_columns`). Returns the alerts, and ``(position, dead letter)``
        of each message that could not be processed.

        Each job's events are applied in their order; jobs are independent of each other, so
        a job's events are applied together, and the alerts come job by job (their order
        across jobs is not that of :meth:`handle`)."""
        raws = [v.encode() if isinstance(v, str) else v for v in values]
        batch = decode_batch(raws)
        cols = batch.steps
        dead: list[tuple[int, DeadLetter]] = []
        # The common batch: every message a step row, row i at position i (rows keep the
        # input order). Its job grouping then needs no loop over the rows.
        plain = len(cols) == len(raws)
        items: list[int | StepEvent | LogEvent | None]
        if plain:
            items = list(range(len(raws)))
        else:
            items = [None] * len(raws)
            for row, position in enumerate(cols.index.tolist()):
                items[position] = row
        for position, event in batch.others:
            if isinstance(event, _INPUT):
                items[position] = event
            else:
                problem = FieldProblem(
                    "kind", f"{event.kind!r} is not an input event (step or log)"
                )
                dead.append((position, self._dead(str(problem), [problem], raws[position])))
        for position, error in batch.errors:
            dead.append((position, self._dead(str(error), error.problems, raws[position])))
        alerts: list[Alert] = []
        start = 0
        if self._clock_next is not None:
            times = cols.times.tolist()
            # Replay's worker clock: advanced before the event that moves it (see handle).
            for position, item in enumerate(items):
                if item is None:
                    continue
                epoch = times[item] if type(item) is int else item.epoch  # type: ignore[union-attr]
                if epoch >= self._clock_next:
                    self._apply_batch(
                        cols, items, start, position, raws, partitions, alerts, dead, plain
                    )
                    start = position
                    self._clock_next = epoch + 1.0
                    alerts += self.engine.advance_clock(epoch, max_step=math.inf)
                    self.note_released()
        self._apply_batch(cols, items, start, len(items), raws, partitions, alerts, dead, plain)
        if alerts:
            self.stats.count(alerts)
        if len(dead) > 1:
            dead.sort(key=lambda d: d[0])
        return alerts, dead

    def _apply_batch(
        self,
        cols: StepColumns,
        items: list[int | StepEvent | LogEvent | None],
        start: int,
        stop: int,
        raws: list[bytes],
        partitions: Sequence[int] | None,
        alerts: list[Alert],
        dead: list[tuple[int, DeadLetter]],
        plain: bool = False,
    ) -> None:
        """Apply ``items[start:stop]``, job by job: runs of step rows as columns, log records
        (and steps decoded one at a time) through :meth:`Engine.process`. ``plain``: item i is
        row i, every one a step row."""
        job_ids = cols.job_ids
        if plain and start < stop and len(set(job_ids[start:stop])) == 1:
            # One job's steps only (a big job's partition): one run of rows, no grouping.
            run = list(range(start, stop))
            chunks = self._meet(job_ids[start], -1 if partitions is None else partitions[start])
            self._apply_rows(cols, run, list(run), raws, alerts, dead, chunks)
            if self.engine.released:
                self._mark(self.engine.released)
            return
        by_job: dict[str, list[int]] = {}
        for position in range(start, stop):
            item = items[position]
            if item is None:
                continue
            job_id = job_ids[item] if type(item) is int else item.job_id  # type: ignore[union-attr]
            got = by_job.get(job_id)
            if got is None:
                by_job[job_id] = [position]
            else:
                got.append(position)
        engine = self.engine
        per = self.ranks_per_chunk
        for job_id, positions in by_job.items():
            chunks = self._meet(job_id, -1 if partitions is None else partitions[positions[0]])
            rows: list[int] = []  # step rows not applied yet, and their positions
            at: list[int] = []
            for position in positions:
                item = items[position]
                if type(item) is int:
                    rows.append(item)
                    at.append(position)
                    continue
                if rows:
                    self._apply_rows(cols, rows, at, raws, alerts, dead, chunks)
                    rows, at = [], []
                event: Any = item
                chunks.add(event.rank // per)
                self._apply_one(event, position, raws, alerts, dead)
            if rows:
                self._apply_rows(cols, rows, at, raws, alerts, dead, chunks)
            if engine.released:
                self._mark(engine.released)

    def _apply_rows(
        self,
        cols: StepColumns,
        rows: list[int],
        at: list[int],
        raws: list[bytes],
        alerts: list[Alert],
        dead: list[tuple[int, DeadLetter]],
        chunks: set[int],
    ) -> None:
        index = np.array(rows, dtype=np.intp)
        chunks.update(np.unique(cols.ranks[index] // self.ranks_per_chunk).tolist())
        self._apply_guarded(
            lambda: self.engine.process_columns(cols, index), at, cols.job_ids[rows[0]],
            raws, alerts, dead,
        )  # fmt: skip

    def _apply_one(
        self,
        event: StepEvent | LogEvent,
        position: int,
        raws: list[bytes],
        alerts: list[Alert],
        dead: list[tuple[int, DeadLetter]],
    ) -> None:
        self._apply_guarded(
            lambda: self.engine.process(event), [position], event.job_id, raws, alerts, dead
        )

    def _apply_guarded(
        self,
        apply: Callable[[], list[Alert]],
        positions: list[int],
        job_id: str,
        raws: list[bytes],
        alerts: list[Alert],
        dead: list[tuple[int, DeadLetter]],
    ) -> None:
        """Run one engine call over the events at ``positions``. As in :meth:`handle`, a
        detector bug must not stop the stream: the events go to the dead-letter topic for a
        replay once the bug is fixed (which of them the engine had applied is not known)."""
        self.stats.events += len(positions)
        try:
            alerts += apply()
        except Exception as exc:
            log.exception("engine failed on %d event(s) of job %s", len(positions), job_id)
            problem = _internal_error(exc)
            self.stats.events -= len(positions)
            dead += [(p, self._dead(str(problem), [problem], raws[p])) for p in positions]

    def _meet(self, job_id: str, partition: int) -> set[int]:
        """The rank chunks of the job touched since the last snapshot (to add to); the first
        time the engine meets the job its saved state is restored, and its input partition
        noted."""
        if self.restore is not None and job_id not in self.engine.jobs:
            restored = self.restore(job_id)
            if restored is not None:
                self.engine.adopt(restored)
        chunks = self.dirty.get(job_id)
        if chunks is None:
            chunks = self.dirty[job_id] = set()
            if partition >= 0:
                self._note_partition(job_id, partition)
        return chunks

    def feed_clock_from_events(self) -> None:
        """Drive the engine's worker clock (:meth:`Engine.advance_clock`) from the events'
        own times, once a second of event time, before the event that moves it: how replay
        sees a job's silence where the live worker saw it on its wall clock."""
        self._clock_next = -math.inf

    def note_released(self) -> None:
        """Mark the ranks whose held steps the engine applied outside :meth:`handle` (at a
        quiet tick of the worker's clock) as changed."""
        if self.engine.released:
            self._mark(self.engine.released)

    def _mark(self, released: list[tuple[str, list[int]]]) -> None:
        dirty = self.dirty
        per = self.ranks_per_chunk
        for job_id, ranks in released:
            chunks = dirty.get(job_id)
            if chunks is None:
                chunks = dirty[job_id] = set()
            chunks.update({rank // per for rank in ranks})
        released.clear()

    def flush(self) -> list[Alert]:
        """End of input: the engine's last tick and pending decisions (replay only)."""
        alerts = self.engine.flush()
        if self.engine.released:
            self._mark(self.engine.released)
        self.stats.count(alerts)
        return alerts

    def forget_partitions(self, partitions: set[int]) -> list[str]:
        """Drop the jobs of ``partitions`` (now owned by another worker); return their ids."""
        gone = [j for j, p in self.partition_of.items() if p in partitions]
        for job_id in gone:
            self.engine.release(job_id)
            self.dirty.pop(job_id, None)
            del self.partition_of[job_id]
        return gone

    def take_dirty(self) -> dict[str, set[int]]:
        """The jobs (and their rank chunks) touched since the last call; resets the record."""
        dirty, self.dirty = self.dirty, {}
        return dirty

    def _note_partition(self, job_id: str, partition: int) -> None:
        known = self.partition_of.setdefault(job_id, partition)
        if known != partition:
            # Steps and logs of one job must share a partition number (same key, same
            # partitioner, same partition count), or a rebalance splits the job's state.
            log.warning(
                "job %s arrives on partitions %d and %d: are the producers' partitioners "
                "the same (murmur2, as Java and aiokafka use)?",
                job_id,
                known,
                partition,
            )
            self.partition_of[job_id] = partition

    def _dead(
        self,
        error: str,
        problems: list[FieldProblem],
        raw: bytes,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
        key: bytes | None = None,
    ) -> DeadLetter:
        self.stats.bad += 1
        return DeadLetter(error, problems, raw, topic, partition, offset, key)
