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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from rankwatch.schemas import Alert, EventDecodeError, FieldProblem, LogEvent, StepEvent, decode
from rankwatch.streams.detectors.base import JobState
from rankwatch.streams.engine import Engine
from rankwatch.streams.state_codec import DEFAULT_RANKS_PER_CHUNK

log = logging.getLogger(__name__)

_INPUT = (StepEvent, LogEvent)  # a tuple: isinstance is quicker with it than with a union

#: Looks a job up in persistent state the first time the engine meets it (or None).
Restore = Callable[[str], JobState | None]

#: Bytes of a bad message's payload kept in its dead letter (base64 may grow it by a third).
MAX_DEAD_PAYLOAD = 256 * 1024


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
        if self.restore is not None and job_id not in engine.jobs:
            restored = self.restore(job_id)
            if restored is not None:
                engine.adopt(restored)
        chunks = self.dirty.get(job_id)
        if chunks is None:
            chunks = self.dirty[job_id] = set()
            if partition >= 0:
                self._note_partition(job_id, partition)
        chunks.add(event.rank // self.ranks_per_chunk)
        try:
            alerts = engine.process(event)
        except Exception as exc:
            # A detector bug must not stop the stream for every job: the event is kept in the
            # dead-letter topic for a replay once the bug is fixed.
            log.exception("engine failed on %s offset %s (job %s)", topic, offset, job_id)
            problem = FieldProblem("", f"internal error in the detector engine: {exc!r}")
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
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
    ) -> DeadLetter:
        self.stats.bad += 1
        return DeadLetter(error, problems, raw, topic, partition, offset, key)
