"""What both worker runtimes do between taking messages and committing: the shared core.

:class:`StreamCore` holds the engine, the pipeline, the snapshot store, the steps/logs merge,
the outbox and the :class:`~rankwatch.streams.runtime.checkpoint.Checkpoint`; it processes
messages in timestamp order across the input topics, publishes alerts (holding back those
already on the alerts topic), judges quiet jobs on the worker's clock, and takes partitions
over or lets them go. The runtimes only feed it: the batch runtime
(:mod:`rankwatch.streams.runtime.batch`) from a confluent-kafka consumer, the Faust runtime
(:mod:`rankwatch.streams.worker`) from a Faust agent. Its clients come in as arguments.

Messages are anything with confluent-kafka's ``Message`` methods (``value()``, ``topic()``,
``partition()``, ``offset()``, ``key()``, ``timestamp()``, ``error()``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from rankwatch.schemas import encode
from rankwatch.streams.pipeline import Pipeline
from rankwatch.streams.runtime.alignment import CaughtUp, InputAligner
from rankwatch.streams.runtime.checkpoint import Checkpoint, Offsets, Outbox
from rankwatch.streams.runtime.common import (
    Counters,
    RulesWatcher,
    StatsLine,
    TopicLayout,
    WorkerOptions,
    log_alert,
    new_engine,
    restore_job,
)
from rankwatch.streams.snapshots import SnapshotStore

log = logging.getLogger("rankwatch.worker")

#: How far before a partition's last snapshot the alerts topic is read back at assignment:
#: the previous owner's clock may differ from the broker's.
ALERTS_MARGIN_MS = 60_000


class StateTable(Protocol):
    """The changelog store (:class:`~rankwatch.streams.runtime.changelog.ChangelogKV`)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, partition: int | None) -> None: ...

    def restore(self, partitions: set[int]) -> dict[int, int]: ...

    def drop(self, partitions: set[int]) -> None: ...


class Reads(Protocol):
    """What a worker reads from Kafka when it takes partitions over
    (:class:`~rankwatch.streams.runtime.changelog.KafkaReads`)."""

    def published_alerts(self, since_ms: int | None) -> set[tuple[str, str]]: ...

    def uncommitted(self, partitions: set[int]) -> bool: ...

    def starts(self, partitions: set[int]) -> dict[tuple[str, int], tuple[int, int]]: ...


class StreamCore:
    """Engine, pipeline, state, merge, outbox and checkpoint; see the module docstring."""

    def __init__(
        self,
        options: WorkerOptions,
        layout: TopicLayout,
        *,
        outbox: Outbox,
        table: StateTable,
        offsets: Offsets,
        reads: Reads,
        rules: Any = None,
    ) -> None:
        self.options = options
        self.layout = layout
        self.outbox = outbox
        self.kv = table
        self.reads = reads
        self.rules = RulesWatcher(options.rules_file, rules)
        self.engine = new_engine(rules)
        self.store = SnapshotStore(table, self.engine, options.ranks_per_chunk)
        self.pipeline = Pipeline(
            self.engine, restore=self._restore, ranks_per_chunk=options.ranks_per_chunk
        )
        self.inputs = (layout.steps, layout.logs)
        self._input_index = {topic: i for i, topic in enumerate(self.inputs)}
        #: A job's steps and logs, merged by timestamp as they were produced (see alignment).
        self.aligner = InputAligner(len(self.inputs))
        self.counters = Counters()
        self.stats = StatsLine()
        self.checkpoint = Checkpoint(
            self.pipeline,
            self.store,
            outbox,
            offsets,
            self.aligner,
            self.inputs,
            self.counters,
            fork=options.snapshot_fork,
        )
        self.owned: set[int] = set()  # input partitions whose state is loaded here
        #: (alert_id, status) already on the alerts topic, sent after the snapshot that the
        #: state of newly assigned partitions comes from: their replay must not resend them.
        self.published: set[tuple[str, str]] = set()
        self._metrics: Any = None

    @property
    def metrics(self) -> Any:
        """Prometheus hooks (:class:`~rankwatch.streams.metrics.WorkerMetrics`) or None."""
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self._metrics = metrics
        self.checkpoint.metrics = metrics

    @property
    def unacked(self) -> int:
        """Events processed since the last commit."""
        return self.checkpoint.pending

    # -- messages in, alerts out ---------------------------------------------------------

    def process(
        self, messages: list[Any], now: float, caught_up: CaughtUp | None, *, eof: int = 0
    ) -> int:
        """Every message through the pipeline, in timestamp order across the input topics;
        alerts and dead letters sent, not yet flushed. Returns how many are held back.
        ``eof``: the error code of "end of partition" events among the messages."""
        aligner, index = self.aligner, self._input_index
        i, n = 0, len(messages)
        while i < n:
            i = aligner.add_messages(messages, index, i)  # up to the next one with an error
            if i < n:
                msg = messages[i]
                if msg.error().code() == eof:
                    aligner.mark_end(index[msg.topic()], msg.partition())
                else:
                    self.consumer_error(msg)
                i += 1
        ready = aligner.ready(now, caught_up)
        if ready:
            values = [b"" if (v := msg.value()) is None else v for msg in ready]
            alerts, dead = self.pipeline.handle_batch(
                values, partitions=[msg.partition() for msg in ready]
            )
            if alerts:
                self.publish(alerts)
            produce = self.outbox.produce
            for position, letter in dead:
                msg = ready[position]
                letter.topic, letter.partition = msg.topic(), msg.partition()
                letter.offset, letter.key = msg.offset(), msg.key()
                log.warning(
                    "dead letter %s[%d]@%d: %s",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    letter.error,
                )
                produce(self.layout.deadletter, letter.to_bytes(), letter.key)
                self.counters.dead += 1
        self.checkpoint.pending += len(ready)
        return aligner.held()

    def consumer_error(self, msg: Any) -> None:
        log.warning("Kafka consumer: %s", msg.error())

    def publish(self, alerts: list[Any]) -> None:
        for alert in alerts:
            if self.published and (alert.alert_id, alert.status) in self.published:
                log.info("alert %s %s already published", alert.alert_id, alert.status)
                continue
            log_alert(alert)
            self.outbox.produce(self.layout.alerts, encode(alert), alert.job_id.encode())
            self.counters.alerts += 1
            if self._metrics is not None:
                self._metrics.on_alert(alert)

    def tick_clock(self, healthy: bool) -> None:
        """Judge the jobs that went quiet on the wall clock (``Engine.advance_clock``),
        counting their silence only while ``healthy``."""
        alerts = self.engine.advance_clock(time.time(), healthy=healthy)
        pipeline = self.pipeline
        pipeline.note_released()  # held steps applied at a quiet tick: their ranks changed
        if alerts:
            for alert in alerts:  # the job's state changed: persist it with the next snapshot
                pipeline.dirty.setdefault(alert.job_id, set())
            self.publish(alerts)
            self.checkpoint.pending += 1

    def reload_rules(self) -> None:
        """Use the rules file anew if it changed (and validates); between batches."""
        new = self.rules.changed()
        if new is not None:
            new.install(self.engine)

    def log_stats(self) -> None:
        self.stats.log(self.pipeline.stats.events, len(self.engine.jobs), self.counters)

    # -- partitions coming and going ------------------------------------------------------

    def assign(self, new: set[int]) -> None:
        """These input partitions are ours now: drop the jobs of those that left, read the
        state of those that came, and the alerts their replay must not publish again."""
        self.drop(self.owned - new)
        added = new - self.owned
        if added:  # before any of their events is processed
            snapshotted = self.kv.restore(added)
            # Alerts sent after a partition's last snapshot are not in its state: its replay
            # re-fires them. A partition with events but no snapshot at all (a crash before
            # the first one) may re-fire any alert on the topic; one with nothing to replay
            # re-fires none.
            stateless = added - snapshotted.keys()
            if stateless and self.reads.uncommitted(stateless):
                self.published |= self.reads.published_alerts(None)
            elif snapshotted:
                since = min(snapshotted.values()) - ALERTS_MARGIN_MS
                self.published |= self.reads.published_alerts(since)
        self.owned = new
        log.info("partitions assigned: %s (state read for %s)", sorted(new), sorted(added))

    def revoke(self, partitions: set[int], *, persist: bool = True) -> None:
        """These partitions are leaving: persist and commit while they are still ours (the
        next owner starts from this state and re-fires nothing); forget what is held for
        them (whoever owns them next reads it again from the commit, at or before it)."""
        if persist:
            self.checkpoint.commit()
        self.aligner.drop(partitions)

    def lose(self, partitions: set[int]) -> None:
        """Taken away without a revocation (evicted from the group): dropped uncommitted,
        their new owner may already be ahead."""
        log.warning("partitions %s lost (evicted from the group): dropped uncommitted", partitions)
        self.drop(partitions)
        self.aligner.drop(partitions)
        self.owned -= partitions

    def drop(self, partitions: set[int]) -> None:
        if not partitions:
            return
        gone = self.pipeline.forget_partitions(partitions)
        for job_id in gone:
            self.store.forget(job_id)
        self.kv.drop(partitions)
        log.info("partitions %s gone: dropped %d jobs", sorted(partitions), len(gone))

    def _restore(self, job_id: str) -> Any:
        return restore_job(self.store, job_id)
