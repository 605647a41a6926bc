"""The one commit protocol of both worker runtimes: flush, persist, flush, commit.

A worker may commit an input offset only once everything that offset covers is safe on the
brokers: the alerts and dead letters its events caused (a state that records an incident as
alerted must never meet a topic without the alert), and the state of every job those events
changed. :meth:`Checkpoint.commit` does it in that order, and nothing else in the worker
commits:

1. flush the producer: every alert and dead letter sent so far is on the brokers;
2. write the state of the jobs that changed (:meth:`SnapshotStore.save`, the chunks the
   pipeline marked dirty) to the changelog, through the same producer;
3. flush again: the state is on the brokers;
4. commit the consumer's positions, each no further than the first message the steps/logs
   merge still holds for that topic partition (:meth:`InputAligner.first_held`): a held
   message was consumed, not processed, and a restart must read it again.

The batch runtime begins each periodic checkpoint with :meth:`Checkpoint.begin`: steps 1 and
the reading of the positions happen at once, step 2 is planned in a forked process from the
engine as it was at that moment (:mod:`~rankwatch.streams.runtime.forked`), and
:meth:`Checkpoint.advance`, called every turn of the loop, writes the plans when they are
ready, and commits the positions read at the fork once the state is on the brokers. The loop
goes on processing meanwhile; what it processes belongs to the next checkpoint. A revocation or
a stop completes the one under way first (:meth:`Checkpoint.commit` does).

A flush that does not complete (stopping while Kafka is away) or a delivery that failed, and a
state record over the changelog's limit (:class:`~rankwatch.streams.snapshots.StateTooLarge`),
commit nothing; the jobs stay marked for the next checkpoint. The clients are protocols
(:class:`Producer`, :class:`Offsets`): the batch runtime passes confluent-kafka's, the Faust
runtime an adapter of its consumer, and the tests fakes that write down the order of calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.pipeline import Pipeline
from rankwatch.streams.runtime.alignment import InputAligner
from rankwatch.streams.runtime.common import Counters
from rankwatch.streams.runtime.forked import ForkedPlans, ForkFailed, can_fork
from rankwatch.streams.snapshots import SnapshotPlan, SnapshotStore

log = logging.getLogger("rankwatch.worker")

#: (topic, partition): an input topic partition, by name.
TopicPartitionKey = tuple[str, int]


class Producer(Protocol):
    """What the runtime asks of a producer (confluent-kafka's ``Producer`` has it)."""

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


class Offsets(Protocol):
    """The consumer's side of a checkpoint: where it is, and committing there."""

    def positions(self) -> dict[TopicPartitionKey, int]:
        """Next offset to read per assigned input topic partition (consumed, maybe held)."""
        ...

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> bool:
        """Commit synchronously; False if it could not be done now (retried next time)."""
        ...


class Outbox:
    """Alerts, dead letters and state records through one producer.

    ``delivered`` is the producer's delivery callback: the first failed delivery is kept,
    and the next :meth:`flush` raises instead of letting a commit skip the lost message.
    """

    def __init__(self, producer: Producer | None, stopping: Callable[[], bool]) -> None:
        self.producer: Producer = producer  # type: ignore[assignment]  # set by connect()
        self.stopping = stopping
        self.failed: str | None = None

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.1)

    def delivered(self, error: Any, msg: Any) -> None:
        if error is not None and self.failed is None:
            self.failed = f"{msg.topic()}[{msg.partition()}]: {error}"

    def flush(self) -> bool:
        """Wait until every message sent is on the brokers; False if stopping meanwhile."""
        waited = 0
        while left := self.producer.flush(1.0):
            if self.stopping():  # Kafka away at shutdown: no commit, the restart replays
                return False
            waited += 1
            if waited % 30 == 0:
                log.warning("%d messages still waiting for Kafka after %d s", left, waited)
        self._raise_failed()
        return True

    def delivered_all(self) -> bool:
        """Whether every message sent is on the brokers, without waiting."""
        left = self.producer.flush(0)
        self._raise_failed()
        return left == 0

    def _raise_failed(self) -> None:
        if self.failed:
            # Committing now could skip an alert that never reached the brokers: stop, and
            # let the restart replay from the last commit.
            raise StreamsError(f"producer could not deliver: {self.failed}")


@dataclass
class _InFlight:
    """A checkpoint begun in the background: what it covers, until it commits."""

    child: ForkedPlans | None  # None once its plans are written
    dirty: dict[str, set[int]]
    offsets: dict[TopicPartitionKey, int]  # the positions at the fork
    pending: int  # the events they cover
    started: float
    written: int = 0


class Checkpoint:
    """Flush, persist the changed jobs, flush, commit: see the module docstring.

    ``pending`` counts the events processed since the last commit (the runtimes add to it);
    a checkpoint with none does nothing.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        store: SnapshotStore,
        outbox: Outbox,
        offsets: Offsets,
        aligner: InputAligner,
        inputs: Sequence[str],
        counters: Counters,
        *,
        fork: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.outbox = outbox
        self.offsets = offsets
        self.aligner = aligner
        self.inputs = tuple(inputs)
        self.counters = counters
        self.pending = 0
        #: Prometheus hooks (``on_snapshot``, ``on_commit``), when the worker serves metrics.
        self.metrics: Any = None
        self._inflight: _InFlight | None = None  # a checkpoint begun in the background
        #: no forks: not asked for, the platform has none, or a child failed (then logged)
        self._in_loop = not (fork and can_fork())

    def commit(self) -> bool:
        """One checkpoint, done here and now; True when the offsets were committed (or nothing
        was pending). One under way in the background (:meth:`begin`) is completed first."""
        self.finish()
        if not self.pending:
            return True
        started = time.perf_counter()
        pipeline = self.pipeline
        dirty = pipeline.take_dirty()
        written = 0
        try:
            # Alerts and dead letters before the state that records them as sent.
            if not self.outbox.flush():
                self._keep(dirty)
                return False
            # Every job planned before any is written: a job too large writes nothing.
            for plan in self._plans(dirty):
                written += self.store.apply(plan)
            if not self.outbox.flush():
                self._keep(dirty)
                return False
        except BaseException:
            self._keep(dirty)
            raise
        committed = self._commit(self.positions())
        self._finished(len(dirty), written, self.pending, committed, started)
        if committed:
            self.pending = 0
        return committed

    # -- the same checkpoint, its state planned in a forked process --------------------------

    def begin(self) -> None:
        """Start a checkpoint whose state is planned in a forked process
        (:mod:`~rankwatch.streams.runtime.forked`), so that the loop goes on meanwhile; the
        loop calls :meth:`advance` every turn. The same order as :meth:`commit`: the alerts
        are flushed and the positions read at the fork, the state planned from the engine
        as it was then is written and flushed when the child is done, then those positions
        are committed. Where the platform cannot fork, or a child failed before, the
        checkpoint is done here and now instead."""
        if self._inflight is not None or not self.pending:
            return
        if self._in_loop:
            self.commit()
            return
        started = time.perf_counter()
        pipeline = self.pipeline
        dirty = pipeline.take_dirty()
        try:
            if not self.outbox.flush():
                self._keep(dirty)
                return
            offsets = self.positions()
            child = ForkedPlans(lambda: self._plans(dirty))  # the lambda runs in the child
        except OSError as exc:  # no fork (out of memory, process limit): do it here
            log.warning("snapshot cannot fork (%r): checkpoints run in the loop from now", exc)
            self._in_loop = True
            self._keep(dirty)
            self.commit()
            return
        except BaseException:
            self._keep(dirty)
            raise
        self._inflight = _InFlight(child, dirty, offsets, self.pending, started)
        self.pending = 0

    def advance(self, wait: bool = False) -> None:
        """Move a background checkpoint on, without waiting unless ``wait``: write the
        child's plans once it is done, commit once they are delivered."""
        flight = self._inflight
        if flight is None:
            return
        if flight.child is not None:
            if not wait and not flight.child.ready():
                return
            child, flight.child = flight.child, None
            try:
                plans = child.plans()
                for plan in plans:
                    flight.written += self.store.apply(plan)
            except ForkFailed as exc:
                log.warning("%s; checkpoints run in the loop from now", exc)
                self._in_loop = True
                self._abandon(flight)
                return
            except BaseException:
                self._abandon(flight)
                raise
        try:
            delivered = self.outbox.flush() if wait else self.outbox.delivered_all()
        except BaseException:
            self._abandon(flight)
            raise
        if not delivered:
            if wait:  # stopping with Kafka away: nothing committed, the restart replays
                self._abandon(flight)
            return
        self._inflight = None
        committed = self._commit(flight.offsets)
        self._finished(len(flight.dirty), flight.written, flight.pending, committed, flight.started)
        if not committed:
            self.pending += flight.pending

    def finish(self) -> None:
        """Complete a background checkpoint now (before a revocation, or stopping)."""
        if self._inflight is not None:
            self.advance(wait=True)

    def abandon(self) -> None:
        """Drop a background checkpoint without committing (the loop failed)."""
        flight = self._inflight
        if flight is not None:
            if flight.child is not None:
                flight.child.abandon()
            self._abandon(flight)

    def _abandon(self, flight: _InFlight) -> None:
        self._inflight = None
        self._keep(flight.dirty)
        self.pending += flight.pending

    def _plans(self, dirty: dict[str, set[int]]) -> list[SnapshotPlan]:
        """The records of the changed jobs (:meth:`SnapshotStore.plan`), nothing written."""
        jobs = self.pipeline.engine.jobs
        partition_of = self.pipeline.partition_of
        return [
            self.store.plan(jobs[job_id], chunks, partition_of.get(job_id))
            for job_id, chunks in dirty.items()
            if job_id in jobs
        ]

    def _commit(self, offsets: dict[TopicPartitionKey, int]) -> bool:
        if not offsets:
            return True
        began = time.perf_counter()
        committed = self.offsets.commit(offsets)
        if committed and self.metrics is not None:
            self.metrics.on_commit(time.perf_counter() - began)
        return committed

    def _finished(
        self, jobs: int, written: int, events: int, committed: bool, started: float
    ) -> None:
        self.counters.snapshots += 1
        self.counters.snapshot_bytes += written
        if self.metrics is not None:
            self.metrics.on_snapshot(time.perf_counter() - started)
        log.debug(
            "snapshot: %d jobs, %d bytes, %d events %s, %.1f ms",
            jobs,
            written,
            events,
            "committed" if committed else "NOT committed",
            (time.perf_counter() - started) * 1000,
        )

    def positions(self) -> dict[TopicPartitionKey, int]:
        """The consumer's positions, each moved back to the first message still held."""
        positions = self.offsets.positions()
        held = self.aligner.first_held()
        if held:
            inputs = self.inputs
            for (topic, partition), first in held.items():
                key = (inputs[topic], partition)
                known = positions.get(key)
                # Only partitions still assigned: one that moved on is not ours to commit.
                if known is not None and (known < 0 or first < known):
                    positions[key] = first
        return {k: v for k, v in positions.items() if v >= 0}

    def _keep(self, dirty: dict[str, set[int]]) -> None:
        """Put the jobs of a checkpoint that did not complete back for the next one."""
        marks = self.pipeline.dirty
        for job_id, chunks in dirty.items():
            marks.setdefault(job_id, set()).update(chunks)
